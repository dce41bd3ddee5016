r"""Nash-MD-PG: policy gradient against an opponent sampled from the geometric mixture of policy and reference.

Munos et al. 2023, "Nash Learning from Human Feedback": y ~ pi, y' sampled token by token
from pi^(1-m) mu^m (m = 0.125, `config.nash.mixture`), A = P(y > y') - 1/2 - tau log pi/mu.

Tiny (CPU, intransitive task, ~2 minutes after the cached SFT policy and preference model):
  python -m alignjax.main --config=experiments/nash_md.py:tiny --workdir=/tmp/nash_md_tiny
  measured (seed 0, 100 iterations): exploitability 0.328, worst-case win rate 0.172
  (SFT reference 0.348 / 0.152; DPO 0.434 / 0.066).
Full scale (model=small on one GPU or a v5e-8, with real prompts and checkpoints):
  python -m alignjax.main --config=experiments/nash_md.py:model=small --workdir=$WORKDIR
Summary fields, the full-scale flags and the arguments: `experiment_lib.nash`.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='intransitive',
                                 preference='model', tau=0.05, eta=1.0, k=1, lr=3e-4, steps=0)
    c = experiment_lib.online_base('nash_md', a)
    # Sequence-level objectives (REINFORCE on log pi(y)); the KL to the reference is tau, inside
    # each method's objective.
    c.rl = experiment_lib.rl(a, c.data.max_response_len, aggregation='sequence_sum', kl_coef=0.0)
    c.nash = experiment_lib.nash(a)
    return c
