"""The scorers of the online family from `config.reward.source` (`alignjax.rewards`): the gold
reward, the reward model, Python reward functions, or a weighted sum of them."""

from __future__ import annotations

from alignjax import rewards
from alignjax import rollout as rollout_lib
from alignjax.trainers.reward_model import load_reward_model


def make_scorer(config, mesh, task):
    """The scorer of config.reward.source (`alignjax.rewards`: the gold reward, the reward model,
    reward functions, or a weighted sum of them) and the reward model with its config (or None)."""
    r = config.reward
    terms = rewards.parse(r.source)
    reward_model, scorers = None, []
    for t in terms:
        if t.kind == 'gold':
            scorers.append((t.weight, rollout_lib.GoldScorer(task)))
        elif t.kind == 'reward_model':
            reward_model = load_reward_model(r.reward_from, mesh)
            scorers.append((t.weight,
                            rollout_lib.RewardModelScorer(reward_model[0], mesh,
                                                          aggregate=r.aggregate, lam=r.lam)))
        else:
            scorers.append(
                (t.weight,
                 rewards.FunctionScorer(t.path, workers=r.get('workers', 1),
                                        timeout_s=r.get('timeout_s',
                                                        60.0), on_error=r.get('on_error', 'stop'),
                                        error_penalty=r.get('error_penalty', -1.0))))
    if len(scorers) == 1 and scorers[0][0] == 1.0 and terms[0].kind != 'fn':
        return scorers[0][1], reward_model  # as before: no sum, no per-term metrics
    return rewards.SumScorer(scorers), reward_model


def proxy_scorer(scorer):
    """The reward-model scorer in `scorer` (alone or a term of a sum), or None: what the gold
    evaluation reports as the proxy reward."""
    for _, s in getattr(scorer, 'scorers', [(1.0, scorer)]):
        if isinstance(s, rollout_lib.RewardModelScorer):
            return s
    return None
