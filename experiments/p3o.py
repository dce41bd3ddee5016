r"""P3O, pairwise PPO: two samples a prompt, the pair's reward difference as advantage, a
trajectory-level clipped ratio.

Wu et al. 2023 ("Pairwise Proximal Policy Optimization: Harnessing Relative Feedback for LLM
Alignment"): A_1 = (R_1 - R_2) / 2 = -A_2, rho_i = pi(y_i) / pi_old(y_i) per trajectory,
l = sum_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps)) (`losses/group.p3o_loss`; joint=True
clips the pair's ratio rho_1 / rho_2 instead); R is the score minus kl_coef * sum_t KL_t; 2
epochs of 2 minibatches per rollout, as for PPO.

Tiny (CPU; trains or reuses the cached tiny SFT policy):
  python -m alignjax.main --config=experiments/p3o.py:tiny --workdir=/tmp/p3o
  summary.json: gold_reward against gold_reward_ref, kl_to_ref; metrics.jsonl: clip_fraction.

Full scale (model=small, real prompts and a reward model as for ppo.py):
  python -m alignjax.main --config=experiments/p3o.py:model=small,reward=rm --workdir=$WORKDIR

Arguments: tiny, model, task, reward, ensemble, kl (default 0.05, or 0.2 with reward=rm), joint,
lr, steps.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, kl=-1.0, joint=False, lr=3e-4, steps=0)
    a.k = 2
    c = experiment_lib.online_base('p3o', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = ''
    c.rl = experiment_lib.rl(a, c.data.max_response_len, p3o_joint=a.joint, epochs=2, minibatches=2)
    return c
