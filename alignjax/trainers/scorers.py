"""The scorers of the online family from `config.reward.source` (`alignjax.rewards`): the gold
reward, the reward model, Python reward functions, or a weighted sum of them."""

from __future__ import annotations

import zlib

import jax
import numpy as np

from alignjax import evaluation
from alignjax import rewards
from alignjax import rollout as rollout_lib
from alignjax.errors import ValidationError
from alignjax.losses import robust
from alignjax.trainers.reward_model import load_reward_model


def make_scorer(config, mesh, task, *, reference=None, tok=None):
    """The scorer of config.reward.source (`alignjax.rewards`: the gold reward, the reward model,
    reward functions, or a weighted sum of them) and the reward model with its config (or None).
    config.reward.transform='log_sigmoid' transforms the reward model's term (with the
    `reference` policy's samples); config.reward.constraints makes it a sum whose multipliers the
    trainer moves (constrained RLHF)."""
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
    if r.get('transform', ''):
        if reward_model is None:
            raise ValidationError(f"config.reward.transform={r.transform!r} transforms a reward "
                                  "model's scores: config.reward.source needs reward_model")
        i = [t.kind for t in terms].index('reward_model')
        scorers[i] = (scorers[i][0], LogSigmoidScorer(scorers[i][1], reference, tok, config))
    constrained = bool(r.get('constraints', ''))
    if len(scorers) == 1 and scorers[0][0] == 1.0 and terms[0].kind != 'fn' and not constrained:
        return scorers[0][1], reward_model  # as before: no sum, no per-term metrics
    return rewards.SumScorer(scorers), reward_model


def constraints(config):
    """The thresholds theta_i [terms] of config.reward.constraints ('TERM<THETA,...'), inf where
    a term has none; None without constraints."""
    spec = config.reward.get('constraints', '')
    if not spec:
        return None
    names = [
        t.name if t.kind != 'fn' else f'fn:{t.path}' for t in rewards.parse(config.reward.source)
    ]
    return robust.parse_constraints(spec, names)


ROWS = 64  # the reference samples of new prompts come in multiples of this


class LogSigmoidScorer:
    """A reward model's members transformed and summed, sum_k log sigmoid(r_k - r_ref,k(x))
    (`losses/robust.log_sigmoid_transform`), r_ref,k(x) the config.reward.ref_quantile quantile of
    member k's rewards of config.reward.ref_samples reference samples of prompt x: computed once
    a prompt (seeded by the prompt's text) and cached."""

    name = 'reward_model'

    def __init__(self, rm_scorer, reference, tok, config):
        if reference is None or tok is None:
            raise ValueError('the log-sigmoid transform needs the reference policy')
        self.rm, self.reference, self.tok = rm_scorer, reference, tok
        r = config.reward
        self.q, self.n = float(r.get('ref_quantile', 0.85)), int(r.get('ref_samples', 8))
        self.seed, self.config = config.seed, config
        self.cache: dict[str, np.ndarray] = {}

    def _ref_values(self, prompts) -> np.ndarray:
        missing = sorted(set(prompts) - set(self.cache))
        if missing:
            rows = [p for p in missing for _ in range(self.n)]
            # Padded to a multiple of ROWS (repeating the last): the sampler compiles for a few
            # shapes, not for every count of new prompts.
            rows += [rows[-1]] * (-len(rows) % ROWS)
            key = jax.random.key(self.seed + 7771 + zlib.crc32('|'.join(missing).encode()))
            s = evaluation.sample(self.reference, rows, self.tok,
                                  max_prompt_len=self.config.data.max_prompt_len,
                                  max_new_tokens=self.config.rl.max_new_tokens,
                                  temperature=self.config.rl.temperature, key=key)
            members = self.rm.members(
                rollout_lib.Responses(prompt=s['prompt'], prompt_mask=s['prompt_mask'],
                                      response=s['tokens'], response_mask=s['mask']))
            members = members[:len(missing) * self.n]
            q = robust.reference_quantiles(members.reshape(len(missing), self.n, -1), self.q)
            self.cache.update(zip(missing, q))
        return np.stack([self.cache[p] for p in prompts])

    def __call__(self, responses) -> np.ndarray:
        # The reference values first, so that the members' spread left for `metrics()` is the
        # policy's samples', not the reference's.
        ref = self._ref_values(list(responses.prompt_texts))
        return robust.log_sigmoid_transform(self.rm.members(responses), ref)

    def metrics(self) -> dict:
        return self.rm.metrics()


def proxy_scorer(scorer):
    """The reward-model scorer in `scorer` (alone or a term of a sum), or None: what the gold
    evaluation reports as the proxy reward."""
    for _, s in getattr(scorer, 'scorers', [(1.0, scorer)]):
        if isinstance(s, rollout_lib.RewardModelScorer):
            return s
    return None
