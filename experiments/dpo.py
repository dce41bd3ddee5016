r"""Direct preference optimisation and its family, from an SFT policy.

Tiny (CPU; trains or reuses the cached tiny SFT policy as start and reference, then ~1 minute):
  python -m alignjax.main --config=experiments/dpo.py:tiny --workdir=/tmp/dpo_tiny
  python -m alignjax.main --config=experiments/dpo.py:tiny,loss=ipo --workdir=/tmp/ipo_tiny
  summary.json: gold_reward (policy) against gold_reward_ref (the SFT reference), gold_win_rate,
  kl_to_ref, and held-out implicit-reward accuracy, margins and log-probs.

Full scale (model=small on one GPU or a v5e-8; real data with --config.data.train=jsonl:PATH
and --config.init_from=<SFT workdir>):
  python -m alignjax.main --config=experiments/dpo.py:model=small --workdir=$WORKDIR

Arguments: tiny, model, task, loss (a type of alignjax/losses/preference.PAIR_LOSSES: sigmoid,
ipo, hinge, simpo, robust, exo_pair, nca_pair, sppo_hard, apo_zero, apo_down, bco_pair, aot,
aot_unpaired, discopop, sft, sigmoid_norm; or several joined by '+', e.g. loss=sigmoid+sft),
beta, label_smoothing, rpo_alpha, discopop_tau, steps, lr, lora (rank R of adapters on the
frozen SFT policy, which is also the reference with the adapters off; the learning rate x3; 0:
full fine-tuning).
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', loss='sigmoid',
                                 beta=0.1, label_smoothing=0.0, rpo_alpha=0.0, gamma=0.5,
                                 discopop_tau=0.05, steps=0, lr=1e-4, lora=0)
    c = experiment_lib.base_config(algo='dpo', model=a.model, tiny=a.tiny)
    c.data.train = f'synthetic:{a.task}'
    c.optim.lr = a.lr
    c.optim.warmup_steps = 10
    c.init_from = (f'experiment:experiments/sft.py:tiny,task={a.task}' if a.tiny else '')
    c.reference_from = ''  # '' -> the same as init_from
    c.loss = dict(types=tuple(a.loss.split('+')), weights=(), beta=a.beta,
                  label_smoothing=a.label_smoothing, gamma=a.gamma, rpo_alpha=a.rpo_alpha,
                  discopop_tau=a.discopop_tau, reference_free=False, length_normalize=False,
                  precompute_ref=False)
    c.eval_every = 150 if a.tiny else 1000  # held-out figures into metrics.jsonl too
    if a.tiny:
        c.total_steps = 300
        c.log_every = 25
        c.ckpt_every = 100
        c.eval.num_prompts = 128
    else:
        c.total_steps = 3000
        c.data.batch_size = 64
        c.ckpt_every = 500
    if a.steps:
        c.total_steps = a.steps
    return experiment_lib.with_lora(c, a.lora)


def get_hyper(arg=None):
    """The loss-family ablation: sigmoid (DPO), IPO and hinge (SLiC), each at three betas.

    python launch/sweep.py --config=experiments/dpo.py:tiny --workdir=/tmp/dpo_ablation
    """
    del arg
    return [{'config.loss.types': (loss,), 'config.loss.beta': beta}
            for loss in ('sigmoid', 'ipo', 'hinge')
            for beta in (0.05, 0.1, 0.3)]
