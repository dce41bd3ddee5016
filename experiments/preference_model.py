r"""Pairwise preference model (antisymmetric), the judge of the Nash-learning family.

Tiny (CPU, ~1.5 minutes; backbone from scratch):
  python -m alignjax.main --config=experiments/preference_model.py:tiny --workdir=/tmp/pm_tiny
  On the intransitive task (the default here) summary.json reports held-out `accuracy`,
  `cycle_pairs_accuracy` and `prefers_0_over_1`, `prefers_1_over_2`, `prefers_2_over_0` (all
  > 0.5 when the cycle is fitted). Compare with the Bradley-Terry reward model:
  python -m alignjax.main --config=experiments/reward_model.py:tiny,task=intransitive --workdir=/tmp/rm_cyc

Full scale (model=small; --config.data.train=jsonl:PATH, --config.backbone_from=<SFT workdir>):
  python -m alignjax.main --config=experiments/preference_model.py:model=small --workdir=$WORKDIR

Arguments: tiny, model, task, steps, lr.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive', steps=0,
                                 lr=1e-3)
    c = experiment_lib.base_config(algo='preference_model', model=a.model, tiny=a.tiny)
    c.data.train = f'synthetic:{a.task}'
    c.optim.lr = a.lr
    # From scratch: on the tiny task a fresh backbone learns the response class (its first
    # token) faster than the SFT backbone, whose last-token state serves next-token prediction.
    c.backbone_from = ''
    c.eval_every = 500 if a.tiny else 1000  # held-out figures into metrics.jsonl too
    if a.tiny:
        c.total_steps = 1500
        c.log_every = 100
        c.ckpt_every = 500
    else:
        c.total_steps = 5000
        c.data.batch_size = 64
        c.ckpt_every = 1000
    if a.steps:
        c.total_steps = a.steps
    return c
