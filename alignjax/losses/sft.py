"""Supervised fine-tuning objective."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sft_loss(logprobs: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token negative log-likelihood of the response: (sum of NLL, number of tokens).

    loss = -sum_{b,t} mask[b,t] * log pi(y_t | x, y_<t) / sum mask. Returned as a sum and a count
    so that gradient accumulation over microbatches divides once, by the global token count.

    Args:
      logprobs: [B, R] log-probs of the response tokens.
      mask: [B, R] 1 on response tokens (EOS included), 0 on padding.
    """
    mask = mask.astype(jnp.float32)
    return -jnp.sum(logprobs * mask), jnp.sum(mask)
