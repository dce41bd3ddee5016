r"""Bradley-Terry reward model (optionally an ensemble) on preference pairs.

Tiny (CPU; trains or reuses the cached tiny SFT policy as the backbone, then ~1 minute):
  python -m alignjax.main --config=experiments/reward_model.py:tiny --workdir=/tmp/rm_tiny
  python -m alignjax.main --config=experiments/reward_model.py:tiny,ensemble=4 --workdir=/tmp/rm4
  summary.json: held-out `accuracy` against `gold_label_accuracy` (what the noisy gold labels
  allow) and `bayes_accuracy`; `ece`; per-member accuracies for ensembles.
  Measured (transitive): accuracy 0.787, ECE 0.051 at 600 steps; 0.811, ECE 0.082 with steps=1500;
  the gold reward itself scores 0.854 on the same labels (Bayes rate 0.855).

Label noise and preference strength (Wang et al. 2024, "Secrets of RLHF in Large Language Models
Part II: Reward Modeling"), tiny, CPU: `label_noise=F` swaps chosen and rejected in a seeded
fraction F of the training pairs (config.data.flip_fraction; held-out pairs stay clean);
`secrets` measures each training pair's strength with a frozen ensemble of `members` reward models
trained on the same noisy pairs (config.reward.reward_from, trained once into the cache:
`reward_model.py:tiny,ensemble=4,ensemble_type=models,label_noise=F`, seed 0: name another
ensemble for other seeds), flips the pairs it ranks the other way (`flip_negative`, those below
`flip_below` <= 0) and trains with the margin adaptive_margin * strength. About 1 minute each,
2 more for the ensemble the first time:
  python -m alignjax.main --config=experiments/reward_model.py:tiny,label_noise=0.2 \
    --config.data.num_eval_examples=4096 --workdir=/tmp/rm_noise20
  python -m alignjax.main --config=experiments/reward_model.py:tiny,label_noise=0.2,secrets \
    --config.data.num_eval_examples=4096 --workdir=/tmp/rm_secrets20
  summary.json: `accuracy` on clean held-out pairs; the `strength` figures: flipped_fraction,
  injected_flipped_back (of the injected flips, the fraction undone), clean_flipped, and the
  training labels' gold agreement before and after the flips.
  Measured (seed 0, 4096 held-out pairs; 512 by default, too few to rank these: in brackets):
  clean labels 0.771 [0.787]. label_noise=0.2: plain 0.729 [0.738], secrets 0.741 [0.725]; it
  flips 31% of the pairs, 72% of the injected flips and 21% of the others (the labels' gold
  agreement 0.707 -> 0.808). label_noise=0.4: plain 0.639 [0.637], secrets 0.648 [0.686]; 38%
  flipped, 56% of the injected and 26% of the others (0.572 -> 0.684). Flips alone (margin 0):
  0.735 and 0.645; the margin alone (flip_negative=False): 0.730 and 0.641, with the best ECE
  (0.018 at 0.2); flipping makes the model over-confident (ECE 0.18-0.24 against 0.06-0.08).
  members_type=heads (4 heads on one backbone, less diverse) finds fewer flips: 0.721, 0.653.
  One seed: the gains (about a point) are smaller than the 512- and 4096-pair sets disagree.

Full scale (model=small, one GPU or a v5e-8; real data with --config.data.train=jsonl:PATH and
--config.backbone_from=<SFT workdir>):
  python -m alignjax.main --config=experiments/reward_model.py:model=small --workdir=$WORKDIR

Arguments: tiny, model, task, ensemble (K), ensemble_type (heads | models), aggregate
(mean | min | mean_minus_std), steps, lr, lora (rank R of adapters on the frozen backbone, the
reward heads trained whole; the learning rate x3; 0: full fine-tuning), label_noise (fraction of
training labels flipped, synthetic tasks), secrets (preference-strength training; at full scale
name the ensemble with --config.reward.reward_from=<reward-model workdir>), members and
members_type (models | heads: the tiny strength ensemble), flip_negative, flip_below,
adaptive_margin (gamma; 0: no margin).
"""

from alignjax import experiment_lib

ADAPTIVE_MARGIN = 0.5  # gamma of `secrets`: the margin gamma * strength (measured above)


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', ensemble=1,
                                 ensemble_type='heads', aggregate='mean', steps=0, lr=1e-3, lora=0,
                                 label_noise=0.0, secrets=False, members=4, members_type='models',
                                 flip_negative=True, flip_below=0.0,
                                 adaptive_margin=ADAPTIVE_MARGIN)
    c = experiment_lib.base_config(algo='reward_model', model=a.model, tiny=a.tiny)
    c.data.train = f'synthetic:{a.task}'
    if a.label_noise:  # only then: the other runs' configs (and cache entries) stay as they were
        c.data.flip_fraction = a.label_noise
    c.optim.lr = a.lr
    c.backbone_from = f'experiment:experiments/sft.py:tiny,task={a.task}' if a.tiny else ''
    c.reward = dict(ensemble=a.ensemble, ensemble_type=a.ensemble_type, aggregate=a.aggregate,
                    lam=1.0, use_margin=False, centering=0.0)
    if a.secrets:
        if a.members < 1 or a.flip_below > 0 or a.adaptive_margin < 0:
            raise ValueError(f'secrets needs members >= 1, flip_below <= 0 and adaptive_margin '
                             f'>= 0; got {a.members}, {a.flip_below}, {a.adaptive_margin}')
        noise = f',label_noise={a.label_noise}' if a.label_noise else ''
        c.reward.update(
            reward_from=(f'experiment:experiments/reward_model.py:tiny,task={a.task},'
                         f'ensemble={a.members},ensemble_type={a.members_type}{noise}'
                         if a.tiny else ''), flip_negative=a.flip_negative, flip_below=a.flip_below,
            adaptive_margin=a.adaptive_margin)
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
