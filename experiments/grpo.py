r"""GRPO: group-normalised advantages, clipped ratio, and a k3 KL to the reference as a loss;
and the variants the field runs, each an argument.

Shao et al. 2024 (DeepSeekMath): A_i = (R_i - mean_g R) / (std_g R + eps) over the k samples of
a prompt; the KL enters the loss (k3 estimator, coefficient kl) rather than the reward.
- `dr_grpo` (Liu et al. 2025, "Understanding R1-Zero-Like Training"): no std in the advantage,
  and every token weighted 1 / (G * max_new_tokens) whatever its response's length
  (rl.aggregation='constant_length'); `unnormalized` drops the std alone.
- `dapo` (Yu et al. 2025): dynamic sampling (groups with all-equal scores replaced by fresh
  prompts' groups, up to 3 more rollouts a step; rl.dynamic_sampling_rounds), clip-higher
  (0.2 / 0.28), token-level aggregation, no KL (unless kl is given), and the soft overlong punishment over the last
  quarter of max_new_tokens.
- `gspo` (Zheng et al. 2025): the sequence-level, length-normalised ratio, clipped at 3e-4 / 4e-4,
  sequence-mean aggregation.

Tiny (CPU; trains or reuses the cached tiny SFT policy):
  python -m alignjax.main --config=experiments/grpo.py:tiny --workdir=/tmp/grpo_tiny
  python -m alignjax.main --config=experiments/grpo.py:tiny,reward=rm --workdir=/tmp/grpo_rm
  summary.json: gold_reward against gold_reward_ref, kl_to_ref (and proxy_reward with reward=rm).
Verifiable rewards on the addition task (alignjax/data/arithmetic.py), scored by a Python
function (alignjax/rewards.py); summary.json adds pass@1, pass@4 and the format-error rate:
  python -m alignjax.main --config=experiments/grpo.py:tiny,task=addition,dapo \
      --config.reward.source=fn:alignjax.data.arithmetic:exact_match --workdir=/tmp/grpo_add
  The three variants against plain GRPO, curves in WORKDIR/pass_at_1.png:
  python -m alignjax.repro.verifiable --outdir=/tmp/verifiable

Full scale (model=small on one GPU or a v5e-8, real prompts and reward model as for ppo.py):
  python -m alignjax.main --config=experiments/grpo.py:model=small,reward=rm --workdir=$WORKDIR

Arguments: tiny, model, task, reward (gold | rm | a config.reward.source such as
fn:MODULE:NAME), ensemble, k (>= 2), kl (default 0.04, or 0.2 with reward=rm), lr, steps,
unnormalized, dr_grpo, dapo, gspo, lora (rank R of adapters on the frozen SFT policy, the
reference with the adapters off; the learning rate x3; 0: full fine-tuning).
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, k=4, kl=-1.0, lr=3e-4, steps=0, unnormalized=False,
                                 dr_grpo=False, dapo=False, gspo=False, lora=0)
    if a.dr_grpo + a.dapo + a.gspo > 1:
        raise ValueError('grpo.py: choose one of dr_grpo, dapo and gspo')
    c = experiment_lib.online_base('grpo', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = ''  # the key PPO sets; no critic here
    variant = dict(grpo_normalize=not a.unnormalized)
    if a.dr_grpo:
        variant.update(grpo_normalize=False, aggregation='constant_length')
    elif a.dapo:
        variant.update(dynamic_sampling_rounds=3, clip=0.2, clip_high=0.28,
                       aggregation='token_mean', overlong_buffer=max(c.data.max_response_len // 4,
                                                                     1))
        if a.kl < 0:
            variant['kl_coef'] = 0.0
    elif a.gspo:
        variant.update(importance_level='sequence', clip=3e-4, clip_high=4e-4,
                       aggregation='sequence_mean')
    c.rl = experiment_lib.rl(a, c.data.max_response_len, kl_in='loss', kl_estimator='k3', **variant)
    if a.kl < 0 and a.reward != 'rm' and 'kl_coef' not in variant:
        c.rl.kl_coef = 0.04
    return experiment_lib.with_lora(c, a.lora)
