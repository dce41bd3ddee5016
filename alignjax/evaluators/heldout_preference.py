"""Held-out preference pairs under a DPO-family policy: implicit rewards beta * log(pi / ref)
(Rafailov et al. 2023), their accuracy, and the ranking accuracy 1[pi(y_w) > pi(y_l)] of the
policy and of the reference ("Preference learning algorithms do not learn preference rankings",
Chen et al. 2024)."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from alignjax import sharding
from alignjax.data import inputs


def figures(pc, pr, rc, rr, *, beta: float) -> dict[str, float]:
    """From per-pair log-prob sums of the policy (pc, pr) and the reference (rc, rr)."""
    margin = (pc - rc) - (pr - rr)
    return {
        'heldout/rewards_chosen': float(beta * np.mean(pc - rc)),
        'heldout/rewards_rejected': float(beta * np.mean(pr - rr)),
        'heldout/rewards_margin': float(beta * np.mean(margin)),
        'heldout/implicit_accuracy': float(np.mean(margin > 0)),
        'heldout/logps_chosen': float(np.mean(pc)),
        'heldout/logps_rejected': float(np.mean(pr)),
        'heldout/ranking_accuracy': float(np.mean(pc > pr)),
        'heldout/ranking_accuracy_ref': float(np.mean(rc > rr)),
    }


def make(config, records, tok, mesh, *, policy_logps, reference_logps, beta: float):
    """`(model, step) -> figures` over `records`; `policy_logps(state, batch)` gives (pc, pr, ...)
    on device, `reference_logps(host batch)` (rc, rr)."""
    def evaluate(model, step):
        del step
        state = nnx.state(model)
        rows = {k: [] for k in ('pc', 'pr', 'rc', 'rr')}
        for batch, real in inputs.fixed_batches(config, 'preference', records, tok,
                                                batch_size=config.data.batch_size):
            pc, pr, _, _ = jax.device_get(policy_logps(state, sharding.shard_batch(batch, mesh)))
            rc, rr = jax.device_get(reference_logps(batch))
            for k, v in zip(('pc', 'pr', 'rc', 'rr'), (pc, pr, rc, rr)):
                rows[k].append(np.asarray(v)[:real])
        pc, pr, rc, rr = (np.concatenate(rows[k]) for k in ('pc', 'pr', 'rc', 'rr'))
        return figures(pc, pr, rc, rr, beta=beta)

    return evaluate
