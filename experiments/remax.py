r"""ReMax: REINFORCE with the greedy response's reward as the baseline; no critic.

Li et al. 2023: A(y) = R(y) - R(greedy(x)), one value per sequence, R the score minus
kl_coef * sum_t KL_t; one policy-gradient step per rollout. About half of PPO's memory (no critic
and its optimizer state) at the cost of one greedy decode per prompt.

Tiny (CPU; trains or reuses the cached tiny SFT policy):
  python -m alignjax.main --config=experiments/remax.py:tiny --workdir=/tmp/remax_tiny
  python -m alignjax.main --config=experiments/remax.py:tiny,reward=rm --workdir=/tmp/remax_rm
  summary.json: gold_reward against gold_reward_ref, kl_to_ref (and proxy_reward with reward=rm);
  metrics.jsonl: rollout/score, rollout/greedy_score, rollout/gold_reward, rollout/kl_to_ref,
  entropy, lengths, EOS rate, throughput.

Full scale (model=small on one GPU or a v5e-8, real prompts and reward model as for ppo.py):
  python -m alignjax.main --config=experiments/remax.py:model=small,reward=rm --workdir=$WORKDIR

Arguments: tiny, model, task, reward (gold | rm), ensemble, k, kl (default 0.05, or 0.2 with
reward=rm), lr, steps.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, k=1, kl=-1.0, lr=3e-4, steps=0)
    c = experiment_lib.online_base('remax', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = ''  # the key PPO sets; no critic here
    c.rl = experiment_lib.rl(a, c.data.max_response_len)  # the greedy baseline: config.rl
    return c
