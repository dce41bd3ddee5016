"""A reward model's (or ensemble's) held-out accuracy and calibration, per member and
aggregated; on a synthetic task, the gold labels' own accuracy and the Bayes rate beside it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import sharding
from alignjax.data import inputs
from alignjax.data import synthetic
from alignjax.losses import reward as reward_losses


def evaluate_pairs(score, records_batches, *, aggregate: str, lam: float, task=None,
                   records=None) -> dict[str, float]:
    """Held-out accuracy and calibration of a reward model, per member and aggregated."""
    rc_all, rr_all = [], []
    for batch, real in records_batches:
        rc, rr = score(batch)
        rc_all.append(np.asarray(rc)[:real])
        rr_all.append(np.asarray(rr)[:real])
    rc, rr = np.concatenate(rc_all), np.concatenate(rr_all)  # [N, K]
    agg = lambda r: np.asarray(
        reward_losses.aggregate_ensemble(jnp.asarray(r), method=aggregate, lam=lam))
    ac, ar = agg(rc), agg(rr)
    correct, count = reward_losses.pairwise_accuracy(jnp.asarray(ac), jnp.asarray(ar))
    # Calibration of P(first > second), with every other pair presented in swapped order.
    prob = 1.0 / (1.0 + np.exp(-(ac - ar)))
    swap = np.arange(len(prob)) % 2 == 1
    labels = np.where(swap, 0.0, 1.0)
    prob = np.where(swap, 1.0 - prob, prob)
    out = {
        'accuracy': float(correct / count),
        'ece': float(reward_losses.expected_calibration_error(prob, labels)),
        'reward_gap': float(np.mean(ac - ar)),
    }
    if rc.shape[1] > 1:
        for k in range(rc.shape[1]):
            out[f'accuracy_member{k}'] = float(
                np.mean((rc[:, k] > rr[:, k]) + 0.5 * (rc[:, k] == rr[:, k])))
    if task is not None and records is not None:
        # What the gold labels allow: the gold reward's own accuracy on these labels, and the
        # Bayes rate E[max(p, 1 - p)] of the Bradley-Terry labelling noise.
        p = np.array(
            [task.gold_preference(r['prompt'], r['chosen'], r['rejected']) for r in records])
        out['gold_label_accuracy'] = float(np.mean((p > 0.5) + 0.5 * (p == 0.5)))
        out['bayes_accuracy'] = float(np.mean(np.maximum(p, 1.0 - p)))
        if task.name == 'intransitive':
            out.update(synthetic.cycle_accuracy(ac - ar, records, p))
    return out


def make(config, records, tok, mesh, *, score, task=None):
    """`(model, step) -> figures` over `records`; `score(state, batch)` gives the chosen and
    rejected rewards [B, K] of each member."""
    r = config.reward

    def evaluate(model, step):
        del step
        state = nnx.state(model)
        batches = inputs.fixed_batches(config, 'preference', records, tok,
                                       batch_size=config.data.batch_size)
        return evaluate_pairs(lambda b: score(state, sharding.shard_batch(b, mesh)), batches,
                              aggregate=r.aggregate, lam=r.lam, task=task, records=records)

    return evaluate
