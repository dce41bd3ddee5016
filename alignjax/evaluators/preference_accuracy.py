"""A preference model's held-out accuracy and calibration of P(chosen > rejected); on a synthetic
task, the gold labels' own accuracy, the Bayes rate and (intransitive) the accuracy on cycles."""

from __future__ import annotations

import numpy as np
from flax import nnx

from alignjax import sharding
from alignjax.data import inputs
from alignjax.data import synthetic
from alignjax.losses import reward as reward_losses


def preference_figures(logit_cr: np.ndarray, records, task) -> dict[str, float]:
    """Held-out accuracy and calibration of P(chosen > rejected) predictions."""
    prob = 1.0 / (1.0 + np.exp(-logit_cr))
    swap = np.arange(len(prob)) % 2 == 1
    out = {
        'accuracy': float(np.mean((logit_cr > 0) + 0.5 * (logit_cr == 0))),
        'ece': float(
            reward_losses.expected_calibration_error(np.where(swap, 1.0 - prob, prob),
                                                     np.where(swap, 0.0, 1.0))),
    }
    if task is not None:
        p = np.array(
            [task.gold_preference(r['prompt'], r['chosen'], r['rejected']) for r in records])
        out['gold_label_accuracy'] = float(np.mean((p > 0.5) + 0.5 * (p == 0.5)))
        out['bayes_accuracy'] = float(np.mean(np.maximum(p, 1.0 - p)))
        if task.name == 'intransitive':
            out.update(synthetic.cycle_accuracy(logit_cr, records, p))
    return out


def make(config, records, tok, mesh, *, logits, task=None):
    """`(model, step) -> figures` over `records`; `logits(state, batch)` gives [B] logits of
    P(chosen > rejected)."""
    def evaluate(model, step):
        del step
        state = nnx.state(model)
        out = []
        for batch, real in inputs.fixed_batches(config, 'preference', records, tok,
                                                batch_size=config.data.batch_size):
            out.append(np.asarray(logits(state, sharding.shard_batch(batch, mesh)))[:real])
        return preference_figures(np.concatenate(out), records, task)

    return evaluate
