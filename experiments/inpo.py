r"""INPO: online mirror descent on labelled pairs from the current policy.

Zhang et al. 2024, "Iterative Nash Policy Optimization": squared loss
(log pi(yw)/pi(yl) - eta tau log mu(yw)/mu(yl) - (1 - eta tau) log pi_t(yw)/pi_t(yl) - eta/2)^2
on every pair of k samples per prompt, soft-labelled by the preference probability.

Tiny (CPU; intransitive task; trains or reuses the cached tiny SFT policy (start and reference)
and the tiny pairwise preference model (the judge), then ~2 minutes):
  python -m alignjax.main --config=experiments/inpo.py:tiny --workdir=/tmp/inpo_tiny
  python -m alignjax.main --config=experiments/inpo.py:tiny,preference=gold --workdir=/tmp/inpo_gold
  summary.json: exploitability (gold preference of the best response class over the policy, minus
  1/2) and worst_case_win_rate against exploitability_ref / worst_case_win_rate_ref of the SFT
  reference, class fractions, gold_reward, kl_to_ref.

Full scale (model=small on one GPU or a v5e-8; --config.data.train=jsonl:PATH of prompts,
--config.init_from=<SFT workdir>, --config.nash.preference_from=<preference-model workdir>):
  python -m alignjax.main --config=experiments/inpo.py:model=small --workdir=$WORKDIR

Arguments: tiny, model, task, preference (model | gold), tau, eta, k (samples per prompt), lr,
steps.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive',
                                 preference='model', tau=0.05, eta=1.0, k=4, lr=3e-4,
                                 steps=0)
    return experiment_lib.nash_config('inpo', a)
