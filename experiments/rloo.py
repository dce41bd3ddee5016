r"""RLOO: REINFORCE with the leave-one-out baseline over k samples per prompt.

Ahmadian et al. 2024 ("Back to basics"): A_i = R_i - mean of the other k-1 samples' R for the
same prompt, R the score minus kl_coef * sum_t KL_t; one policy-gradient step per rollout.

Tiny (CPU; trains or reuses the cached tiny SFT policy):
  python -m alignjax.main --config=experiments/rloo.py:tiny --workdir=/tmp/rloo_tiny
  python -m alignjax.main --config=experiments/rloo.py:tiny,reward=rm --workdir=/tmp/rloo_rm
  summary.json: gold_reward against gold_reward_ref, kl_to_ref (and proxy_reward with reward=rm).

Full scale (model=small on one GPU or a v5e-8, real prompts and reward model as for ppo.py):
  python -m alignjax.main --config=experiments/rloo.py:model=small,reward=rm --workdir=$WORKDIR

Arguments: tiny, model, task, reward (gold | rm), ensemble, k (>= 2), kl (default 0.05, or 0.2
with reward=rm), lr, steps.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, k=4, kl=-1.0, lr=3e-4, steps=0)
    c = experiment_lib.online_base('rloo', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = ''  # the key PPO sets; no critic here
    c.rl = experiment_lib.rl(a, c.data.max_response_len)
    return c
