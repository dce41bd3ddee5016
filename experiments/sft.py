r"""Supervised fine-tuning on demonstrations.

Tiny (CPU, ~1 minute; learns the synthetic transitive task's reference behaviour):
  python -m alignjax.main --config=experiments/sft.py:tiny --workdir=/tmp/sft_tiny
  expected (measured, 2 CPU cores, ~45 s): nll falls from 5.6 to ~1.9 (the demonstrations'
  entropy); summary.json gold_reward ~0.34 (demonstrations: 0.365) against gold_reward_ref
  ~-1.3 for the random initial policy.

Full scale (model=small on a v5e-8 or one GPU, synthetic data; real data via
`--config.data.train=jsonl:PATH` or `tfds:NAME`):
  python -m alignjax.main --config=experiments/sft.py:model=small --workdir=$WORKDIR

Arguments: tiny, model=<preset>, task=<synthetic task>, steps=<int>, lr=<float>.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', steps=0, lr=3e-3)
    c = experiment_lib.base_config(algo='sft', model=a.model, tiny=a.tiny)
    c.data.train = f'synthetic:{a.task}'
    c.optim.lr = a.lr
    if a.tiny:
        c.total_steps = 1000
        c.log_every = 50
        c.ckpt_every = 100
        c.eval.num_prompts = 64
    else:
        c.total_steps = 2000
        c.data.batch_size = 64
        c.log_every = 50
        c.ckpt_every = 500
    if a.steps:
        c.total_steps = a.steps
    return c
