r"""GRPO: group-normalised advantages, clipped ratio, and a k3 KL to the reference as a loss.

Shao et al. 2024 (DeepSeekMath): A_i = (R_i - mean_g R) / (std_g R + eps) over the k samples of
a prompt; the KL enters the loss (k3 estimator, coefficient kl) rather than the reward;
`unnormalized` drops the std (Liu et al. 2025, "Dr. GRPO").

Tiny (CPU; trains or reuses the cached tiny SFT policy):
  python -m alignjax.main --config=experiments/grpo.py:tiny --workdir=/tmp/grpo_tiny
  python -m alignjax.main --config=experiments/grpo.py:tiny,reward=rm --workdir=/tmp/grpo_rm
  summary.json: gold_reward against gold_reward_ref, kl_to_ref (and proxy_reward with reward=rm).

Full scale (model=small on one GPU or a v5e-8, real prompts and reward model as for ppo.py):
  python -m alignjax.main --config=experiments/grpo.py:model=small,reward=rm --workdir=$WORKDIR

Arguments: tiny, model, task, reward (gold | rm), ensemble, k (>= 2), kl (default 0.04, or 0.2
with reward=rm), lr, steps, unnormalized, lora (rank R of adapters on the frozen SFT policy, the
reference with the adapters off; the learning rate x3; 0: full fine-tuning).
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, k=4, kl=-1.0, lr=3e-4, steps=0, unnormalized=False,
                                 lora=0)
    c = experiment_lib.online_base('grpo', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = ''  # the key PPO sets; no critic here
    c.rl = experiment_lib.rl(a, c.data.max_response_len, kl_in='loss', kl_estimator='k3',
                             grpo_normalize=not a.unnormalized)
    if a.kl < 0 and a.reward == 'gold':
        c.rl.kl_coef = 0.04
    return experiment_lib.with_lora(c, a.lora)
