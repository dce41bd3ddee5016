r"""Nash-MD-PG: policy gradient against an opponent sampled from the geometric mixture of policy and reference.

Munos et al. 2023, "Nash Learning from Human Feedback": y ~ pi, y' sampled token by token
from pi^(1-m) mu^m (m = 0.125, `config.nash.mixture`), A = P(y > y') - 1/2 - tau log pi/mu.

Tiny (CPU; intransitive task; trains or reuses the cached tiny SFT policy (start and reference)
and the tiny pairwise preference model (the judge), then ~2 minutes):
  python -m alignjax.main --config=experiments/nash_md.py:tiny --workdir=/tmp/nash_md_tiny
  python -m alignjax.main --config=experiments/nash_md.py:tiny,preference=gold --workdir=/tmp/nash_md_gold
  summary.json: exploitability (gold preference of the best response class over the policy, minus
  1/2) and worst_case_win_rate against exploitability_ref / worst_case_win_rate_ref of the SFT
  reference, class fractions, gold_reward, kl_to_ref.

Full scale (model=small on one GPU or a v5e-8; --config.data.train=jsonl:PATH of prompts,
--config.init_from=<SFT workdir>, --config.nash.preference_from=<preference-model workdir>):
  python -m alignjax.main --config=experiments/nash_md.py:model=small --workdir=$WORKDIR

Arguments: tiny, model, task, preference (model | gold), tau, eta, k (samples per prompt), lr,
steps.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive',
                                 preference='model', tau=0.05, eta=1.0, k=1, lr=3e-4,
                                 steps=0)
    return experiment_lib.nash_config('nash_md', a)
