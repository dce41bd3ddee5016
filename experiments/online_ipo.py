r"""Online IPO: IPO on fresh pairs from the policy labelled by the preference model.

Calandriello et al. 2024, "Human Alignment of LLMs through Online Preference
Optimisation": its fixed point is the regularised Nash equilibrium.

Tiny (CPU, intransitive task, ~2 minutes after the cached SFT policy and preference model):
  python -m alignjax.main --config=experiments/online_ipo.py:tiny --workdir=/tmp/online_ipo_tiny
  measured (seed 0, 100 iterations): exploitability 0.378, worst-case win rate 0.122
  (SFT reference 0.348 / 0.152; DPO 0.434 / 0.066).
Full scale (model=small on one GPU or a v5e-8, with real prompts and checkpoints):
  python -m alignjax.main --config=experiments/online_ipo.py:model=small --workdir=$WORKDIR
Summary fields, the full-scale flags and the arguments: `experiment_lib.nash`.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive',
                                 preference='model', tau=0.05, eta=1.0, k=4, lr=3e-4, steps=0)
    c = experiment_lib.online_base('online_ipo', a)
    # Sequence-level objectives (REINFORCE on log pi(y)); the KL to the reference is tau, inside
    # each method's objective.
    c.rl = experiment_lib.rl(a, c.data.max_response_len, aggregation='sequence_sum', kl_coef=0.0)
    c.nash = experiment_lib.nash(a)
    return c
