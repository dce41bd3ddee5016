"""Teacher-forced scoring of responses: the bridge from models to the pure losses.

Batches hold a left-padded prompt [B, P] and a right-padded response [B, R]; the model sees their
concatenation, and the logits at positions P-1 .. P+R-2 predict the response tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sequence_logits(model, prompt, prompt_mask, response, response_mask):
    """Logits [B, R, V] (float32) that predict each response token."""
    tokens = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    p = prompt.shape[1]
    logits = model(tokens, mask)
    return logits[:, p - 1:p - 1 + response.shape[1]]


def response_logprobs(model, prompt, prompt_mask, response, response_mask, *,
                      with_entropy: bool = False):
    """Per-token log pi(y_t | x, y_<t) [B, R], zero on padding; optionally the entropy too."""
    logits = sequence_logits(model, prompt, prompt_mask, response, response_mask)
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, response[..., None], axis=-1)[..., 0]
    mask = response_mask.astype(jnp.float32)
    logp = logp * mask
    if not with_entropy:
        return logp
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1) * mask
    return logp, entropy
