r"""DNO: soft-label logistic regression of log-ratio gaps on win-rate gaps.

Rosset et al. 2024, "Direct Nash Optimization", Algorithm 1: targets sigmoid(r_t(a) - r_t(b))
with r_t the win rate among the prompt's samples; the anchor pi_t is the sampling policy.
`config.nash.eta` is the step size (the paper's eta is its inverse).

Tiny (CPU, intransitive task, ~2 minutes after the cached SFT policy and preference model):
  python -m alignjax.main --config=experiments/dno.py:tiny --workdir=/tmp/dno_tiny
  measured (seed 0, 100 iterations): exploitability 0.423, worst-case win rate 0.077
  (SFT reference 0.348 / 0.152; DPO 0.434 / 0.066).
  No reference term: at eta=1 it drifted to KL ~18, gold reward below the reference's.
Full scale (model=small on one GPU or a v5e-8, with real prompts and checkpoints):
  python -m alignjax.main --config=experiments/dno.py:model=small --workdir=$WORKDIR
Summary fields, the full-scale flags and the arguments: `experiment_lib.nash`.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive',
                                 preference='model', tau=0.05, eta=0.2, k=4, lr=3e-4, steps=0)
    c = experiment_lib.online_base('dno', a)
    # Sequence-level objectives (REINFORCE on log pi(y)); the KL to the reference is tau, inside
    # each method's objective.
    # Several updates per rollout: the method regresses towards a target
    # defined by the anchor pi_t (the sampling policy). With a single
    # update from pi = pi_t, INPO's gradient is (eta tau)^2 times online
    # IPO's, which Adam cannot tell apart.
    c.rl = experiment_lib.rl(a, c.data.max_response_len, aggregation='sequence_sum', kl_coef=0.0,
                             epochs=2, minibatches=2)
    c.nash = experiment_lib.nash(a)
    return c
