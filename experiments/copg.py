r"""CoPG, contrastive policy gradient: a squared regression of the pair's reward difference on
its log-ratio difference, from pairs any policy sampled, with no importance sampling.

Flet-Berliac et al. 2024 ("Contrastive Policy Gradient: Aligning LLMs on sequence-level scores
in a supervised-friendly fashion"): l = 1/2 (R(y) - R(y') - beta (h(y) - h(y')))^2 with
h = log pi / mu (`losses/group.copg_loss`), zero at pi* proportional to mu exp(R / beta). Here
the pairs are two samples a prompt from the current policy, reused for 2 epochs of 2
minibatches (off-policy after the first step: no ratio is needed); the KL enters through beta,
not the reward.

Tiny (CPU; trains or reuses the cached tiny SFT policy):
  python -m alignjax.main --config=experiments/copg.py:tiny --workdir=/tmp/copg
  summary.json: gold_reward against gold_reward_ref, kl_to_ref; metrics.jsonl: copg_residual.

Full scale (model=small, real prompts and a reward model as for ppo.py):
  python -m alignjax.main --config=experiments/copg.py:model=small,reward=rm --workdir=$WORKDIR

Arguments: tiny, model, task, reward, ensemble, beta, lr, steps.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, beta=0.1, lr=3e-4, steps=0)
    a.k = 2
    c = experiment_lib.online_base('copg', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = ''
    c.rl = experiment_lib.rl(a, c.data.max_response_len, kl_coef=0.0, beta=a.beta, epochs=2,
                             minibatches=2)
    return c
