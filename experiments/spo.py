r"""SPO: self-play with each sample's win rate among its prompt's samples as the reward.

Swamy et al. 2024, "A Minimaximalist Approach to RLHF": k samples per prompt, the reward of
y_i its mean P(y_i > y_j) over the others, A = win - 1/2 - tau log pi/mu.

Tiny (CPU, intransitive task, ~2 minutes after the cached SFT policy and preference model):
  python -m alignjax.main --config=experiments/spo.py:tiny --workdir=/tmp/spo_tiny
  measured (seed 0, 100 iterations): exploitability 0.382, worst-case win rate 0.118
  (SFT reference 0.348 / 0.152; DPO 0.434 / 0.066).
Full scale (model=small on one GPU or a v5e-8, with real prompts and checkpoints):
  python -m alignjax.main --config=experiments/spo.py:model=small --workdir=$WORKDIR
Summary fields, the full-scale flags and the arguments: `experiment_lib.nash`.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive',
                                 preference='model', tau=0.05, eta=1.0, k=4, lr=3e-4, steps=0)
    c = experiment_lib.online_base('spo', a)
    # Sequence-level objectives (REINFORCE on log pi(y)); the KL to the reference is tau, inside
    # each method's objective.
    c.rl = experiment_lib.rl(a, c.data.max_response_len, aggregation='sequence_sum', kl_coef=0.0)
    c.nash = experiment_lib.nash(a)
    return c
