r"""Bradley-Terry reward model (optionally an ensemble) on preference pairs.

Tiny (CPU; trains or reuses the cached tiny SFT policy as the backbone, then ~1 minute):
  python -m alignjax.main --config=experiments/reward_model.py:tiny --workdir=/tmp/rm_tiny
  python -m alignjax.main --config=experiments/reward_model.py:tiny,ensemble=4 --workdir=/tmp/rm4
  summary.json: held-out `accuracy` against `gold_label_accuracy` (what the noisy gold labels
  allow) and `bayes_accuracy`; `ece`; per-member accuracies for ensembles.
  Measured (transitive): accuracy 0.787, ECE 0.051 at 600 steps; 0.811, ECE 0.082 with steps=1500;
  the gold reward itself scores 0.854 on the same labels (Bayes rate 0.855).

Full scale (model=small, one GPU or a v5e-8; real data with --config.data.train=jsonl:PATH and
--config.backbone_from=<SFT workdir>):
  python -m alignjax.main --config=experiments/reward_model.py:model=small --workdir=$WORKDIR

Arguments: tiny, model, task, ensemble (K), ensemble_type (heads | models), aggregate
(mean | min | mean_minus_std), steps, lr, lora (rank R of adapters on the frozen backbone, the
reward heads trained whole; the learning rate x3; 0: full fine-tuning).
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', ensemble=1,
                                 ensemble_type='heads', aggregate='mean', steps=0, lr=1e-3, lora=0)
    c = experiment_lib.base_config(algo='reward_model', model=a.model, tiny=a.tiny)
    c.data.train = f'synthetic:{a.task}'
    c.optim.lr = a.lr
    c.backbone_from = f'experiment:experiments/sft.py:tiny,task={a.task}' if a.tiny else ''
    c.reward = dict(ensemble=a.ensemble, ensemble_type=a.ensemble_type, aggregate=a.aggregate,
                    lam=1.0, use_margin=False, centering=0.0)
    c.eval_every = 300 if a.tiny else 1000  # held-out figures into metrics.jsonl too
    if a.tiny:
        c.total_steps = 600
        c.log_every = 50
        c.ckpt_every = 200
    else:
        c.total_steps = 5000
        c.data.batch_size = 64
        c.ckpt_every = 1000
    if a.steps:
        c.total_steps = a.steps
    return experiment_lib.with_lora(c, a.lora)
