r"""Online iterative DPO: each round the policy samples k responses a prompt, a reward ranks
them, and the best against the worst take DPO steps against the frozen SFT reference.

Xiong et al. 2024 ("Iterative Preference Learning from Human Feedback"); Dong et al. 2024
("RLHF Workflow: From Reward Modeling to Online RLHF"): l = -log sigmoid(beta * ((logp_c -
ref_c) - (logp_r - ref_r))) on the pairs of `losses/group.preference_pairs` (rule
config.rl.pairing: best_worst, or best_random); a group whose samples all score the same has no
pair. A round is one rollout and config.rl.epochs passes over its pairs (2 here).

Tiny (CPU; trains or reuses the cached tiny SFT policy):
  python -m alignjax.main --config=experiments/online_dpo.py:tiny --workdir=/tmp/online_dpo
  summary.json: gold_reward against gold_reward_ref (the SFT start), kl_to_ref; metrics.jsonl:
  rewards/margin, pairs_kept, rollout/gold_reward per round.
With a reward model (reward=rm) or a reward function (reward=fn:MODULE:NAME) ranking the
samples instead of the task's gold reward, as for grpo.py.

Full scale (model=small on one GPU or a v5e-8, real prompts and a reward model as for ppo.py):
  python -m alignjax.main --config=experiments/online_dpo.py:model=small,reward=rm --workdir=$WORKDIR

Arguments: tiny, model, task, reward, ensemble, k (samples a prompt, >= 2; default 4), beta,
pairing, lr, steps (rounds).
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, k=4, beta=0.1, pairing='best_worst', lr=3e-4, steps=0)
    c = experiment_lib.online_base('online_dpo', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = ''
    c.rl = experiment_lib.rl(a, c.data.max_response_len, kl_coef=0.0, beta=a.beta,
                             pairing=a.pairing, epochs=2)
    return c
