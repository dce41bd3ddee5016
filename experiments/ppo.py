r"""PPO from an SFT policy: per-token KL penalty, GAE critic, clipped ratio and value losses.

Stiennon et al. 2020 / Ouyang et al. 2022: the reward is the score on the last token minus
kl_coef * KL_t on every token; advantages by GAE(gamma=1, lambda=0.95) from a critic trained with
the policy (clipped value loss, vf_coef 0.5); whitened advantages; 2 epochs of 2 minibatches per
rollout.

Tiny (CPU; trains or reuses the cached tiny SFT policy, and with reward=rm the tiny reward model):
  python -m alignjax.main --config=experiments/ppo.py:tiny --workdir=/tmp/ppo_tiny
  python -m alignjax.main --config=experiments/ppo.py:tiny,reward=rm --workdir=/tmp/ppo_rm
  summary.json: gold_reward (policy) against gold_reward_ref (the SFT start), kl_to_ref, and with
  reward=rm proxy_reward / proxy_reward_ref; metrics.jsonl per iteration: rollout/score,
  rollout/gold_reward, rollout/kl_to_ref, entropy, clip_fraction, value_loss,
  rollout/explained_variance, rollout/response_length, rollout/eos_rate, rollout/tokens_per_s,
  update/tokens_per_s.

Full scale (model=small on one GPU or a v5e-8; a real prompt set with
--config.data.train=jsonl:PATH, --config.init_from=<SFT workdir> and
--config.reward.reward_from=<reward-model workdir>):
  python -m alignjax.main --config=experiments/ppo.py:model=small,reward=rm --workdir=$WORKDIR

Arguments: tiny, model, task, reward (gold | rm), ensemble (reward-model members), k (samples
per prompt), kl (kl_coef; default 0.05, or 0.2 with reward=rm), lr, steps (iterations), critic (reward_model | policy | scratch).
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, k=1, kl=-1.0, lr=1e-4, steps=0, critic='')
    c = experiment_lib.online_base('ppo', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = a.critic or ('reward_model' if a.reward == 'rm' else 'policy')  # or scratch
    if c.critic_from == 'scratch':
        c.critic_from = ''
    c.rl = experiment_lib.rl(a, c.data.max_response_len, epochs=2, minibatches=2,
                             whiten_advantages=True)
    return c
