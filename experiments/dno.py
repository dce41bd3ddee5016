r"""DNO: soft-label logistic regression of log-ratio gaps on win-rate gaps.

Rosset et al. 2024, "Direct Nash Optimization", Algorithm 1: targets sigmoid(r_t(a) - r_t(b))
with r_t the win rate among the prompt's samples; the anchor pi_t is the sampling policy.
`config.nash.eta` is the step size (the paper's eta is its inverse).

Tiny (CPU; intransitive task; trains or reuses the cached tiny SFT policy (start and reference)
and the tiny pairwise preference model (the judge), then ~2 minutes):
  python -m alignjax.main --config=experiments/dno.py:tiny --workdir=/tmp/dno_tiny
  python -m alignjax.main --config=experiments/dno.py:tiny,preference=gold --workdir=/tmp/dno_gold
  summary.json: exploitability (gold preference of the best response class over the policy, minus
  1/2) and worst_case_win_rate against exploitability_ref / worst_case_win_rate_ref of the SFT
  reference, class fractions, gold_reward, kl_to_ref.

Full scale (model=small on one GPU or a v5e-8; --config.data.train=jsonl:PATH of prompts,
--config.init_from=<SFT workdir>, --config.nash.preference_from=<preference-model workdir>):
  python -m alignjax.main --config=experiments/dno.py:model=small --workdir=$WORKDIR

Arguments: tiny, model, task, preference (model | gold), tau (unused: no reference term), eta
(0.2: with no reference term a larger step drifts far from the reference within the tiny budget:
at eta=1 KL 18-25 and gold reward below the reference's), k (samples per prompt), lr, steps.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive',
                                 preference='model', tau=0.05, eta=0.2, k=4, lr=3e-4,
                                 steps=0)
    return experiment_lib.nash_config('dno', a)
