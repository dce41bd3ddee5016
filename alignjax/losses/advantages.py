"""Advantage estimators of the online objectives: GAE, whitening, ReMax, RLOO and GRPO.

Token-level arrays are [B, T] over right-padded response tokens: mask is 1 on valid tokens and 0
on padding, and the valid tokens of a row are a prefix of it. Sequence-level arrays are [B], one
value per sampled response; the group estimators (RLOO, GRPO) expect the k samples of each prompt
in contiguous rows, rows [i * k, (i + 1) * k) for prompt i. Everything is a pure function of
arrays; nothing here takes a gradient (callers stop it where they need to).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def gae(rewards, values, mask, *, gamma, lam):
    """Generalised advantage estimation by a reverse scan over time.

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation". With m the mask, the episode ends after the last valid token of a row (the value
    beyond it is 0):

        delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
        A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}
        R_t     = A_t + V_t

    lam = 1 with V = 0 gives the discounted return sum_{k >= t} gamma^(k - t) r_k; lam = 0 gives
    the one-step TD error. Rewards and values on padding are ignored.

    Args:
      rewards: [B, T] per-token rewards.
      values: [B, T] value estimates V(x, y_<t).
      mask: [B, T] 1 on valid response tokens, 0 on padding.
      gamma: discount factor.
      lam: GAE lambda.

    Returns:
      (advantages, returns), both [B, T] float32 and zero on padding.
    """
    mask = _f32(mask)
    rewards = _f32(rewards) * mask
    values = _f32(values) * mask
    if not rewards.shape == values.shape == mask.shape or rewards.ndim != 2:
        raise ValueError(f'gae: rewards {rewards.shape}, values {values.shape} and mask '
                         f'{mask.shape} must all be [B, T]')
    next_mask = jnp.pad(mask[:, 1:], ((0, 0), (0, 1)))
    next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
    deltas = rewards + gamma * next_values * next_mask - values

    def step(next_adv, inputs):
        delta, m_next = inputs
        adv = delta + gamma * lam * m_next * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(step, jnp.zeros(rewards.shape[:1], jnp.float32),
                                 (deltas.T, next_mask.T), reverse=True)
    advantages = advantages.T * mask
    return advantages, (advantages + values) * mask


def _masked_moments(x, mask):
    """Mean and population variance of x over mask (0 and 0 when mask is empty)."""
    count = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(x * mask) / count
    var = jnp.sum(jnp.square(x - mean) * mask) / count
    return mean, var


def whiten(x, mask, *, shift_mean=True, eps=1e-8):
    """Standardise x over its valid entries: (x - mean) / sqrt(var + eps), zero on padding.

    Mean and variance are taken over the entries where mask is 1, the variance being the
    population one (ddof = 0). With shift_mean=False the mean is added back, so only the scale
    changes: TRL and OpenRLHF whiten per-token rewards this way, keeping their sign.

    Args:
      x: array of any shape, typically [B, T] advantages or rewards.
      mask: same shape, 1 on valid entries and 0 on padding.
      shift_mean: whether to remove the mean (True for advantages).
      eps: added to the variance.
    """
    x = _f32(x)
    mask = _f32(mask)
    mean, var = _masked_moments(x, mask)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def remax_advantages(rewards, greedy_rewards):
    """ReMax advantages [B]: R(y) - R(y_greedy) of the same prompt.

    Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for
    Aligning Large Language Models": the greedy response's reward is the baseline of REINFORCE.
    """
    return _f32(rewards) - _f32(greedy_rewards)


def _groups(rewards, group_size: int, name: str):
    """Rewards [B] as [B / k, k] groups of contiguous rows; ValueError on bad sizes."""
    rewards = _f32(rewards)
    if rewards.ndim != 1:
        raise ValueError(f'{name}: rewards must be [B], got shape {rewards.shape}')
    batch = rewards.shape[0]
    if group_size < 2:
        raise ValueError(f'{name}: group_size must be >= 2 (samples per prompt), got {group_size}')
    if batch % group_size:
        raise ValueError(f'{name}: batch size {batch} is not divisible by group_size '
                         f'{group_size}')
    return rewards.reshape(batch // group_size, group_size)


def rloo_advantages(rewards, *, group_size: int):
    """REINFORCE leave-one-out advantages [B]: A_i = R_i - mean of the other k - 1 rewards.

    Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al. 2024,
    "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
    LLMs". Rows [i * k, (i + 1) * k) are the k = group_size samples of prompt i.

    Raises:
      ValueError: if rewards is not [B], k < 2, or B is not divisible by k.
    """
    groups = _groups(rewards, group_size, 'rloo_advantages')
    others = (jnp.sum(groups, axis=1, keepdims=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


def grpo_advantages(rewards, *, group_size: int, normalize: bool = True, eps: float = 1e-4):
    """GRPO group-relative advantages [B]: (R - group mean) / (group std + eps).

    Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
    Language Models". The std is the sample one (ddof = 1), as in TRL's GRPOTrainer (torch.std).
    normalize=False returns R - group mean, the Dr. GRPO variant (Liu et al. 2025, "Understanding
    R1-Zero-Like Training: A Critical Perspective"). Rows [i * k, (i + 1) * k) are the
    k = group_size samples of prompt i.

    Raises:
      ValueError: if rewards is not [B], k < 2 (the sample std needs two samples, and with one the
        advantage is identically 0), or B is not divisible by k.
    """
    groups = _groups(rewards, group_size, 'grpo_advantages')
    centred = groups - jnp.mean(groups, axis=1, keepdims=True)
    if normalize:
        std = jnp.std(groups, axis=1, keepdims=True, ddof=1)
        centred = centred / (std + eps)
    return centred.reshape(-1)


def reinforce_pp_advantages(rewards, mask, *, group_size: int, eps: float = 1e-8):
    """REINFORCE++-baseline token advantages [B, T] (Hu 2025, "REINFORCE++"): each sample's
    reward minus its prompt group's mean (all k samples, itself included), broadcast to its
    response tokens, then standardised over every valid token of the batch:

        A_i = R_i - mean_{j in group(i)} R_j;   A_{i,t} = (A_i - mu) / sqrt(sigma^2 + eps),

    mu and sigma^2 the (population) mean and variance of A_{i,t} over the batch's response tokens.
    The group mean removes each prompt's difficulty, as in GRPO; the scale comes from the whole
    batch instead of each group's std, which is noisy for k of 4-8 and infinite for a group of
    equal rewards.
    """
    centred = grpo_advantages(rewards, group_size=group_size, normalize=False)
    return whiten(sequence_to_tokens(centred, mask), mask, eps=eps)


def sequence_to_tokens(adv, mask):
    """Broadcast one advantage per sequence [B] to its valid tokens: [B, T], zero on padding."""
    return _f32(adv)[:, None] * _f32(mask)


def explained_variance(values, returns, mask):
    """1 - Var[returns - values] / Var[returns] over the valid tokens (population variances).

    1 for a perfect critic, 0 for one that predicts the mean return everywhere, negative for one
    worse than that. NaN when the returns have no variance over the valid tokens.
    """
    mask = _f32(mask)
    values, returns = _f32(values), _f32(returns)
    _, var_returns = _masked_moments(returns, mask)
    _, var_residual = _masked_moments(returns - values, mask)
    has_variance = var_returns > 0
    safe = jnp.where(has_variance, var_returns, 1.0)
    return jnp.where(has_variance, 1.0 - var_residual / safe, jnp.nan)
