"""Robust rewards against over-optimisation: the log-sigmoid transform of rewards and the
Lagrange multipliers of constrained RLHF. (BRME's aggregation is a method of
`losses.reward.aggregate_ensemble`.)
"""

from __future__ import annotations

import re

import numpy as np

from alignjax.errors import ValidationError


def log_sigmoid_transform(rewards, ref_values):
    """The transformed reward of Wang et al. 2024 ("Transforming and Combining Rewards for
    Aligning Large Language Models"), summed over reward models:

        u(x, y) = sum_k log sigmoid(r_k(x, y) - r_ref,k(x)),

    r_ref,k(x) a per-prompt reference value of reward model k (here a quantile of the reference
    policy's rewards for x). The transform saturates above r_ref (nothing more to gain by pushing
    one reward model further: the over-optimised direction) and punishes falling below it, and
    the sum acts as a logical AND of "good under every reward model".

    Args:
      rewards: [N] or [N, K] rewards of N responses under K reward models.
      ref_values: the same shape: the reference value of each response's prompt.

    Returns:
      [N] transformed rewards.
    """
    r = np.asarray(rewards, np.float64)
    ref = np.asarray(ref_values, np.float64)
    if r.shape != ref.shape:
        raise ValueError(f'log_sigmoid_transform: rewards {r.shape} and reference values '
                         f'{ref.shape} differ')
    z = r - ref
    u = -np.logaddexp(0.0, -z)  # log sigmoid(z), stable both ways
    return (u if u.ndim == 1 else u.sum(axis=1)).astype(np.float32)


def reference_quantiles(scores, q: float):
    """[P, K] the q-quantile over each prompt's reference samples of scores [P, S, K]
    (linear interpolation between order statistics, NumPy's default)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f'reference quantile must lie in [0, 1], got {q}')
    return np.quantile(np.asarray(scores, np.float64), q, axis=1)


def lagrange_update(multipliers, means, thresholds, *, lr: float):
    """One dual-ascent step of constrained RLHF (Moskovitz et al. 2023, "Confronting Reward
    Model Overoptimization with Constrained RLHF") for constraints E[r_i] <= theta_i on the
    components of a composite reward sum_i w_i r_i. The Lagrangian

        L = sum_i w_i E[r_i] - sum_i lambda_i (E[r_i] - theta_i),   lambda_i >= 0,

    weighs component i by w_i - lambda_i in the policy's reward, and its multiplier moves with
    the constraint's violation, projected onto lambda >= 0:

        lambda_i <- max(0, lambda_i + lr * (E[r_i] - theta_i)).

    An unconstrained component has theta_i = inf (its multiplier stays 0)."""
    lam = np.asarray(multipliers, np.float64)
    theta = np.asarray(thresholds, np.float64)
    step = np.where(np.isfinite(theta), np.asarray(means, np.float64) - theta, 0.0)
    return np.maximum(0.0, lam + lr * step).astype(np.float32)


def parse_constraints(spec: str, names: list[str]) -> np.ndarray:
    """`config.reward.constraints` 'TERM<THETA,...' -> thresholds per term of `names` (the terms
    of config.reward.source, by name: gold, reward_model, fn:MODULE:NAME), inf where none."""
    theta = np.full(len(names), np.inf, np.float32)
    for item in filter(None, (x.strip() for x in str(spec or '').split(','))):
        m = re.fullmatch(r'(.+?)\s*<\s*([-+0-9.eE]+)', item)
        if not m or m.group(1) not in names:
            raise ValidationError(f"config.reward.constraints: {item!r} is not 'TERM<THETA' with "
                                  f'TERM a term of config.reward.source {names}')
        theta[names.index(m.group(1))] = float(m.group(2))
    return theta
