r"""Nash mirror prox: two proximal policy-gradient phases per outer step.

Tiapkin et al. 2025, "Accelerating Nash Learning from Human Feedback via Mirror Prox": each
phase (`config.nash.phase_steps` updates) maximises P(y > opponent) - tau KL(pi||mu)
- (1/eta) KL(pi||pi_t); the opponent is pi_t, then the half step. Checkpoints only at
outer-step boundaries (every 2 * phase_steps updates).

Tiny (CPU, intransitive task, ~2 minutes after the cached SFT policy and preference model):
  python -m alignjax.main --config=experiments/nash_mp.py:tiny --workdir=/tmp/nash_mp_tiny
  measured (seed 0, 100 iterations): exploitability 0.390, worst-case win rate 0.110
  (SFT reference 0.348 / 0.152; DPO 0.434 / 0.066).
Full scale (model=small on one GPU or a v5e-8, with real prompts and checkpoints):
  python -m alignjax.main --config=experiments/nash_mp.py:model=small --workdir=$WORKDIR
Summary fields, the full-scale flags and the arguments: `experiment_lib.nash`.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive',
                                 preference='model', tau=0.05, eta=1.0, k=1, lr=3e-4, steps=0)
    c = experiment_lib.online_base('nash_mp', a)
    # Sequence-level objectives (REINFORCE on log pi(y)); the KL to the reference is tau, inside
    # each method's objective.
    c.rl = experiment_lib.rl(a, c.data.max_response_len, aggregation='sequence_sum', kl_coef=0.0)
    c.nash = experiment_lib.nash(a)
    return c
