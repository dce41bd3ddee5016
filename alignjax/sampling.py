"""Jitted KV-cache sampler: left-padded prompts, one prefill, a `lax.while_loop` decode.

`generate(models, prompt, prompt_mask, key, config)` samples responses from the first model, or
from `combine(logits of every model)` when several are given (Nash-MD's geometric mixture of
policy and reference reuses this loop). It returns right-padded responses with:

- `logprobs`: log-probs of the sampled tokens under the distribution actually sampled from
  (after combining, temperature, top-k and top-p);
- `policy_logprobs`: log-probs of the same tokens under the first model's untempered softmax;
- `mask` (1 up to and including EOS) and `lengths`.

Greedy decoding samples from a point mass; its `logprobs` are the policy's (temperature 1).
Prompts are left-padded to a multiple of `prompt_bucket` before the jitted call, so batches of
the same size and bucket reuse one compiled program. Row b's token t is drawn with the key
`fold_in(key, t)` over the whole batch, so extra left-padding changes nothing that is sampled.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alignjax.models.layers import NEG_INF
from alignjax.models.transformer import init_cache, positions_from_mask


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    greedy: bool = False
    eos_id: int = 2
    pad_id: int = 0
    prompt_bucket: int = 16


def process_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> jax.Array:
    """Log-probs of the distribution sampled from: temperature, then top-k, then top-p."""
    logits = logits.astype(jnp.float32) / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, NEG_INF)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep_sorted = before < top_p  # the top token always survives
        # Scatter back along the last axis, so that [..., V] logits of any rank work.
        keep = jnp.put_along_axis(jnp.zeros_like(keep_sorted), order, keep_sorted, axis=-1,
                                  inplace=False)
        logits = jnp.where(keep, logits, NEG_INF)
    return jax.nn.log_softmax(logits, axis=-1)


def first_model_logits(logits: Sequence[jax.Array]) -> jax.Array:
    return logits[0]


@functools.lru_cache(maxsize=None)  # one closure per coefficient: a stable jit static
def geometric_mixture(coefficient: float) -> Callable[[Sequence[jax.Array]], jax.Array]:
    """Logits of the normalised geometric mixture pi^(1-m) * mu^m (Nash-MD's opponent)."""

    def combine(logits):
        lp_pi = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
        lp_mu = jax.nn.log_softmax(logits[1].astype(jnp.float32), axis=-1)
        return (1.0 - coefficient) * lp_pi + coefficient * lp_mu

    return combine


def _gather(logp, tokens):
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=('graphdefs', 'config', 'combine'))
def _generate(states, prompt, prompt_mask, key, *, graphdefs, config: SamplingConfig, combine):
    models = [nnx.merge(g, s) for g, s in zip(graphdefs, states)]
    b, p = prompt.shape
    n = config.max_new_tokens
    prompt_mask = prompt_mask.astype(jnp.int32)
    kv_mask = jnp.zeros((b, p + n), jnp.int32).at[:, :p].set(prompt_mask)
    positions = positions_from_mask(prompt_mask)

    caches, last_logits = [], []
    for m in models:
        cache = init_cache(m.cfg, b, p + n)
        h, cache = m.hidden(prompt, positions=positions, kv_mask=kv_mask, cache=cache,
                            cache_index=0)
        caches.append(cache)
        last_logits.append(m.logits(h[:, -1:])[:, 0])
    next_position = jnp.sum(prompt_mask, axis=-1)  # position of the first response token

    def cond(carry):
        t, done = carry[0], carry[1]
        return (t < n) & ~jnp.all(done)

    def body(carry):
        t, done, kv_mask, caches, logits, tokens, logp, policy_logp = carry
        policy_lp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
        combined = combine(logits)
        if config.greedy:
            sample_lp = policy_lp
            tok = jnp.argmax(combined, axis=-1).astype(jnp.int32)
        else:
            sample_lp = process_logits(combined, temperature=config.temperature, top_k=config.top_k,
                                       top_p=config.top_p)
            tok = jax.random.categorical(jax.random.fold_in(key, t), sample_lp).astype(jnp.int32)
        live = ~done
        tok = jnp.where(live, tok, config.pad_id)
        tokens = tokens.at[:, t].set(tok)
        logp = logp.at[:, t].set(jnp.where(live, _gather(sample_lp, tok), 0.0))
        policy_logp = policy_logp.at[:, t].set(jnp.where(live, _gather(policy_lp, tok), 0.0))
        kv_mask = kv_mask.at[:, p + t].set(live.astype(jnp.int32))
        done = done | (tok == config.eos_id)
        new_caches, new_logits = [], []
        for m, cache in zip(models, caches):
            h, cache = m.hidden(tok[:, None], positions=(next_position + t)[:, None], kv_mask=kv_mask,
                                cache=cache, cache_index=p + t)
            new_caches.append(cache)
            new_logits.append(m.logits(h)[:, 0])
        return t + 1, done, kv_mask, new_caches, new_logits, tokens, logp, policy_logp

    carry = (jnp.int32(0), jnp.zeros((b,), bool), kv_mask, caches, last_logits,
             jnp.full((b, n), config.pad_id, jnp.int32), jnp.zeros((b, n), jnp.float32),
             jnp.zeros((b, n), jnp.float32))
    _, _, kv_mask, _, _, tokens, logp, policy_logp = jax.lax.while_loop(cond, body, carry)
    mask = kv_mask[:, p:]
    return {'tokens': tokens, 'logprobs': logp, 'policy_logprobs': policy_logp, 'mask': mask,
            'lengths': jnp.sum(mask, axis=-1)}


def bucket_prompts(prompt, prompt_mask, bucket: int, pad_id: int):
    """Left-pads prompts to a multiple of `bucket` tokens."""
    p = prompt.shape[1]
    target = -(-p // bucket) * bucket
    if target == p:
        return prompt, prompt_mask
    pad = ((0, 0), (target - p, 0))
    return (jnp.pad(prompt, pad, constant_values=pad_id), jnp.pad(prompt_mask, pad))


def generate(models, prompt, prompt_mask, key, config: SamplingConfig,
             combine: Callable | None = None) -> dict[str, jax.Array]:
    """Samples `config.max_new_tokens` tokens for each left-padded prompt.

    Args:
      models: a `Decoder` or a sequence of them (the policy first).
      prompt: int32 [B, P], left-padded.
      prompt_mask: [B, P], 1 on real tokens.
      key: PRNG key.
      config: SamplingConfig (static: a new config compiles a new program).
      combine: maps the list of next-token logits [B, V] of every model to the logits sampled from;
        must be a stable object (a module-level function or a cached closure) to avoid recompiles.

    Returns:
      dict with tokens, logprobs, policy_logprobs, mask [B, max_new_tokens] and lengths [B].
    """
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    if combine is None:
        combine = first_model_logits
    graphdefs, states = zip(*(nnx.split(m) for m in models))
    prompt, prompt_mask = bucket_prompts(jnp.asarray(prompt, jnp.int32),
                                         jnp.asarray(prompt_mask, jnp.int32),
                                         config.prompt_bucket, config.pad_id)
    return _generate(list(states), prompt, prompt_mask, key, graphdefs=tuple(graphdefs),
                     config=config, combine=combine)
