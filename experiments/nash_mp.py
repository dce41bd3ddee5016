r"""Nash mirror prox: two proximal policy-gradient phases per outer step.

Tiapkin et al. 2025, "Accelerating Nash Learning from Human Feedback via Mirror Prox": each
phase (`config.nash.phase_steps` updates) maximises P(y > opponent) - tau KL(pi||mu)
- (1/eta) KL(pi||pi_t); the opponent is pi_t, then the half step. Checkpoints only at
outer-step boundaries (every 2 * phase_steps updates).

Tiny (CPU; intransitive task; trains or reuses the cached tiny SFT policy (start and reference)
and the tiny pairwise preference model (the judge), then ~2 minutes):
  python -m alignjax.main --config=experiments/nash_mp.py:tiny --workdir=/tmp/nash_mp_tiny
  python -m alignjax.main --config=experiments/nash_mp.py:tiny,preference=gold --workdir=/tmp/nash_mp_gold
  summary.json: exploitability (gold preference of the best response class over the policy, minus
  1/2) and worst_case_win_rate against exploitability_ref / worst_case_win_rate_ref of the SFT
  reference, class fractions, gold_reward, kl_to_ref.

Full scale (model=small on one GPU or a v5e-8; --config.data.train=jsonl:PATH of prompts,
--config.init_from=<SFT workdir>, --config.nash.preference_from=<preference-model workdir>):
  python -m alignjax.main --config=experiments/nash_mp.py:model=small --workdir=$WORKDIR

Arguments: tiny, model, task, preference (model | gold), tau, eta, k (samples per prompt), lr,
steps.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive',
                                 preference='model', tau=0.05, eta=1.0, k=1, lr=3e-4,
                                 steps=0)
    return experiment_lib.nash_config('nash_mp', a)
