r"""RAFT, reward-ranked fine-tuning: online best-of-k by reward, then SFT on the winners.

Dong et al. 2023 ("RAFT: Reward rAnked FineTuning for Generative Foundation Model
Alignment"): each iteration the policy samples k responses a prompt, keeps the best by reward,
and takes token-NLL steps on the kept ones (config.rl.epochs passes, 2 here); no reference in the
loss (kl_to_ref is reported).

Tiny (CPU; trains or reuses the cached tiny SFT policy):
  python -m alignjax.main --config=experiments/raft.py:tiny --workdir=/tmp/raft
  summary.json: gold_reward against gold_reward_ref, kl_to_ref; metrics.jsonl: winner_return.
With reward=rm or reward=fn:MODULE:NAME (e.g. task=addition with
fn:alignjax.data.arithmetic:exact_match: rejection-sampling fine-tuning on verified answers).

Full scale (model=small, real prompts and a reward model as for ppo.py):
  python -m alignjax.main --config=experiments/raft.py:model=small,reward=rm --workdir=$WORKDIR

Arguments: tiny, model, task, reward, ensemble, k (best of k, >= 2; default 4), lr, steps.
"""

from alignjax import experiment_lib


def get_config(arg=None):
    a = experiment_lib.parse_arg(arg, tiny=False, model='tiny', task='transitive', reward='gold',
                                 ensemble=1, k=4, lr=3e-4, steps=0)
    c = experiment_lib.online_base('raft', a)
    c.reward = experiment_lib.reward(a)
    c.critic_from = ''
    c.rl = experiment_lib.rl(a, c.data.max_response_len, kl_coef=0.0, epochs=2)
    return c
