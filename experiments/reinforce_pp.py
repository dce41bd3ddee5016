r"""REINFORCE++-baseline: the group mean as baseline, the scale from the whole batch.

Hu 2025 ("REINFORCE++"): A_i = R_i - mean_g R over the k samples of a prompt, broadcast to the
response's tokens and standardised over every response token of the batch, instead of GRPO's
per-group std. The rest is GRPO's: clipped ratio, KL to the reference as a k3 loss term, so the
two experiments differ only in the advantage (one row of `trainers/policy_gradient.ONLINE_ALGOS`).

Tiny (CPU; trains or reuses the cached tiny SFT policy):
  python -m alignjax.main --config=experiments/reinforce_pp.py:tiny --workdir=/tmp/rpp_tiny
  summary.json: gold_reward against gold_reward_ref, kl_to_ref.

Arguments: as grpo.py (tiny, model, task, reward, ensemble, k, kl, lr, steps).
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, k=4, kl=-1.0, lr=3e-4, steps=0)
    c = experiment_lib.online_base('reinforce_pp', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = ''  # the key PPO sets; no critic here
    c.rl = experiment_lib.rl(a, c.data.max_response_len, kl_in='loss', kl_estimator='k3')
    if a.kl < 0 and a.reward == 'gold':
        c.rl.kl_coef = 0.04
    return c
