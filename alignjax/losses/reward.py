"""Reward-model objectives: Bradley-Terry loss, ensemble aggregation and evaluation figures.

A reward model r(x, y) is trained on preference pairs (x, y_w, y_l) to rank the chosen response
above the rejected one (Bradley & Terry 1952; Christiano et al. 2017; Ouyang et al. 2022). The
training loss returns a sum and a count so that gradient accumulation over microbatches divides
once, by the global number of pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

AGGREGATE_METHODS = ('mean', 'min', 'mean_minus_std', 'brme')


def _pair_mask(mask, shape, dtype):
    """[B] mask of real pairs (1) and padding (0), broadcast to the [B] or [B, K] reward shape."""
    if mask is None:
        return jnp.ones(shape, dtype)
    mask = jnp.asarray(mask, dtype)
    if len(shape) == 2:
        mask = mask[:, None]
    return jnp.broadcast_to(mask, shape)


def bradley_terry_loss(r_chosen, r_rejected, *, margin=None, centering: float = 0.0, mask=None):
    """Bradley-Terry reward-model loss: (sum over pairs and members, number of terms).

    Per pair and ensemble member:

        loss = -log sigmoid(r_c - r_r - margin) + centering * (r_c + r_r)^2

    The margin is the Llama 2 preference-strength margin (Touvron et al. 2023), or the adaptive
    margin of Wang et al. 2024 ("Secrets of RLHF in Large Language Models Part II: Reward
    Modeling"), margin = gamma * d with d the pair's preference strength under a frozen ensemble
    (`preference_strength`, after `flip_by_strength`); the centering term
    pulls the rewards of each pair towards zero (the "reward centering" auxiliary loss of Eisenstein
    et al. 2023, "Helping or Herding?"), which fixes the otherwise free offset of r. An ensemble of K
    members (Coste et al. 2023, "Reward model ensembles help mitigate overoptimization") is trained
    on the same pairs, each with its own loss, so the sum runs over members and pairs alike.

    Args:
      r_chosen: [B] or [B, K] rewards of the chosen responses (K ensemble members).
      r_rejected: same shape, rewards of the rejected responses.
      margin: None, or [B] margins (broadcast over the K members); never differentiated through
        by the trainers (a data column, or a frozen ensemble's strength).
      centering: coefficient of the squared reward-sum penalty.
      mask: None, or [B] 1 for real pairs and 0 for padding (padding adds nothing, counts nothing).

    Returns:
      (loss_sum, count) with count = B * K (the number of unmasked pair-member terms).
    """
    r_chosen = jnp.asarray(r_chosen)
    r_rejected = jnp.asarray(r_rejected)
    if r_chosen.shape != r_rejected.shape or r_chosen.ndim not in (1, 2):
        raise ValueError(f'bradley_terry_loss: r_chosen {r_chosen.shape} and r_rejected '
                         f'{r_rejected.shape} must both be [B] or [B, K]')
    diff = r_chosen - r_rejected
    if margin is not None:
        margin = jnp.asarray(margin, diff.dtype)
        diff = diff - (margin[:, None] if diff.ndim == 2 else margin)
    per_term = -jax.nn.log_sigmoid(diff)
    if centering:
        per_term = per_term + centering * jnp.square(r_chosen + r_rejected)
    weights = _pair_mask(mask, diff.shape, per_term.dtype)
    return jnp.sum(per_term * weights), jnp.sum(weights)


def aggregate_ensemble(rewards, *, method: str = 'mean', lam: float = 1.0):
    """Collapse K ensemble members' rewards [B, K] into one reward per example [B].

    - 'mean': average over members.
    - 'min': worst case over members (Coste et al. 2023, "worst-case optimization").
    - 'mean_minus_std': uncertainty-weighted optimisation, mean - lam * std over members with the
      population standard deviation (ddof=0) (Coste et al. 2023; Eisenstein et al. 2023).
    - 'brme': reward-robust aggregation, lam * nominal + (1 - lam) * min over members, the nominal
      reward being the members' mean (Yan et al. 2024, "Reward-Robust RLHF in LLMs": the
      robust term bounds the damage of a member that over-rates, the nominal keeps the signal).

    With K = 1 every method returns the single column; a [B] input is taken as one member.
    """
    if method not in AGGREGATE_METHODS:
        raise ValueError(
            f'aggregate_ensemble: unknown method {method!r}; known: {AGGREGATE_METHODS}')
    rewards = jnp.asarray(rewards)
    if rewards.ndim == 1:
        return rewards
    if rewards.ndim != 2:
        raise ValueError(f'aggregate_ensemble: rewards must be [B, K], got {rewards.shape}')
    if method == 'mean':
        return jnp.mean(rewards, axis=1)
    if method == 'min':
        return jnp.min(rewards, axis=1)
    if method == 'brme':
        return lam * jnp.mean(rewards, axis=1) + (1.0 - lam) * jnp.min(rewards, axis=1)
    return jnp.mean(rewards, axis=1) - lam * jnp.std(rewards, axis=1)


def preference_strength(r_chosen, r_rejected):
    """Preference strength of each pair under an ensemble of M reward models: (mean, std), each [B].

    Per pair, with d_m = r_m(x, y_c) - r_m(x, y_r) the reward gap of member m:

        mean = (1/M) sum_m d_m,    std = sqrt((1/M) sum_m (d_m - mean)^2)

    (Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward Modeling"). A
    negative mean says the ensemble ranks the rejected response higher: the label is likely
    wrong; a mean near zero with a large std marks an ambiguous pair. The std is the population
    one (ddof=0). A [B] input is one member (std 0).
    """
    r_chosen = jnp.asarray(r_chosen)
    r_rejected = jnp.asarray(r_rejected)
    if r_chosen.shape != r_rejected.shape or r_chosen.ndim not in (1, 2):
        raise ValueError(f'preference_strength: r_chosen {r_chosen.shape} and r_rejected '
                         f'{r_rejected.shape} must both be [B] or [B, K]')
    diff = r_chosen - r_rejected
    if diff.ndim == 1:
        return diff, jnp.zeros_like(diff)
    return jnp.mean(diff, axis=1), jnp.std(diff, axis=1)


def flip_by_strength(r_chosen, r_rejected, strength, *, below: float = 0.0):
    """Label flipping by preference strength (Wang et al. 2024, "Secrets of RLHF II").

    A pair whose strength (the ensemble's mean reward gap, `preference_strength`) is below the
    threshold has chosen and rejected swapped, and its strength negated:

        flipped = strength < below
        (r_c, r_r, d) <- (r_r, r_c, -d)   where flipped

    `below` = 0 flips every pair the ensemble ranks the other way; a negative threshold flips
    only those it ranks the other way by more than |below|. A positive one would flip pairs the
    ensemble agrees with, and is refused.

    Args:
      r_chosen: [B] or [B, K] rewards of the (labelled) chosen responses of the model trained.
      r_rejected: same shape, of the rejected ones.
      strength: [B] preference strength of each pair as labelled.
      below: the threshold (<= 0).

    Returns:
      (r_chosen, r_rejected, strength, flipped): the rewards and [B] strength in the corrected
      orientation, and the [B] boolean mask of flipped pairs.
    """
    if below > 0:
        raise ValueError(f'flip_by_strength: below must be <= 0 (flip only pairs the ensemble '
                         f'ranks the other way), got {below}')
    r_chosen = jnp.asarray(r_chosen)
    r_rejected = jnp.asarray(r_rejected)
    strength = jnp.asarray(strength)
    if r_chosen.shape != r_rejected.shape or r_chosen.shape[:1] != strength.shape:
        raise ValueError(f'flip_by_strength: r_chosen {r_chosen.shape}, r_rejected '
                         f'{r_rejected.shape} and strength {strength.shape} must be [B] or '
                         '[B, K], [B, K] and [B]')
    flipped = strength < below
    rows = flipped[:, None] if r_chosen.ndim == 2 else flipped
    return (jnp.where(rows, r_rejected, r_chosen), jnp.where(rows, r_chosen, r_rejected),
            jnp.where(flipped, -strength, strength), flipped)


def pairwise_accuracy(r_chosen, r_rejected, *, mask=None):
    """Ranking accuracy: (number correct, count) over [B] pairs.

    A pair scores 1 if r_c > r_r, 0.5 on a tie and 0 otherwise; mask ([B], optional) drops padding.
    """
    r_chosen = jnp.asarray(r_chosen)
    r_rejected = jnp.asarray(r_rejected)
    score = jnp.where(r_chosen > r_rejected, 1.0, jnp.where(r_chosen == r_rejected, 0.5, 0.0))
    weights = _pair_mask(mask, score.shape, score.dtype)
    return jnp.sum(score * weights), jnp.sum(weights)


def expected_calibration_error(probs, labels, *, num_bins: int = 10) -> float:
    """Expected calibration error of predicted P(first preferred) against 0/1 labels.

    ECE = sum_b (n_b / N) * |mean(label in b) - mean(prob in b)| over num_bins equal-width bins of
    [0, 1] (Naeini et al. 2015; Guo et al. 2017). Bin b holds probs in [b/n, (b+1)/n), the last
    bin also holds 1.0. Evaluation only: NumPy, returns a Python float.
    """
    probs = np.asarray(probs, np.float64).reshape(-1)
    labels = np.asarray(labels, np.float64).reshape(-1)
    if probs.shape != labels.shape:
        raise ValueError(f'expected_calibration_error: {probs.shape[0]} probs but '
                         f'{labels.shape[0]} labels')
    if probs.size == 0:
        raise ValueError('expected_calibration_error: no predictions')
    if num_bins < 1:
        raise ValueError(f'expected_calibration_error: num_bins must be >= 1, got {num_bins}')
    bins = np.clip(np.floor(probs * num_bins).astype(np.int64), 0, num_bins - 1)
    prob_sum = np.bincount(bins, weights=probs, minlength=num_bins)
    label_sum = np.bincount(bins, weights=labels, minlength=num_bins)
    # sum_b (n_b/N) |label_sum_b/n_b - prob_sum_b/n_b| = sum_b |label_sum_b - prob_sum_b| / N.
    return float(np.sum(np.abs(label_sum - prob_sum)) / probs.size)
