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
The draw is `jax.random.categorical`'s Gumbel-max, reproduced bit for bit by `gumbel_noise` and
`first_argmax`, which XLA:CPU runs as unrolled vector loops instead of a rolled Threefry loop and
a scalar (value, index) reduction.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alignjax import sharding
from alignjax.models.layers import NEG_INF
from alignjax.models.scoring import next_token_logits
from alignjax.models.transformer import init_cache, positions_from_mask, stack_cache


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


# ----------------------------------------------------------------------------- exact fast sampling
# `jax.random.categorical(key, logits)` is argmax(gumbel(key) + logits). On CPU, JAX lowers the
# Threefry hash as a rolled 5-iteration while loop whose rotation amounts are loop data, and
# `argmax` as a two-operand (value, index) reduce that XLA does not vectorise: per decode step of
# the tiny workload these two were ~3/4 of the time. Below are the same computations, bit for bit
# (tests/test_sampling.py checks them against jax.random), written so that XLA emits one unrolled,
# vectorised elementwise loop and two single-operand reductions.

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 (20 rounds), as JAX's `threefry2x32_p` computes it, with constant shifts."""
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << jnp.uint32(r)) | (x2 >> jnp.uint32(32 - r)))
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x1, x2


def exact_gumbel_supported(key) -> bool:
    """Whether `gumbel_noise` reproduces `jax.random.gumbel` for this key and JAX configuration."""
    return (str(jax.random.key_impl(key)) == 'threefry2x32'
            and bool(jax.config.jax_threefry_partitionable)
            and not jax.config.jax_high_dynamic_range_gumbel)


def gumbel_noise(key_data: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 `jax.random.gumbel(key, shape)` from the key's uint32[2] data (see the guard above).

    Same steps as JAX: counters are the flat index (high word 0), bits = x1 ^ x2, the top 23 bits
    fill a mantissa in [1, 2), minus 1, mapped to [tiny, 1), then -log(-log(u)).
    """
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f'gumbel_noise: {size} values exceed a 32-bit counter')
    counts = jax.lax.iota(jnp.uint32, size).reshape(shape)
    x1, x2 = _threefry2x32(key_data[0], key_data[1], jnp.zeros_like(counts), counts)
    bits = (x1 ^ x2) >> jnp.uint32(32 - 23) | jnp.uint32(0x3F800000)  # float32 1.0's exponent
    floats = jax.lax.bitcast_convert_type(bits, jnp.float32) - jnp.float32(1.0)
    tiny = jnp.float32(jnp.finfo(jnp.float32).tiny)
    u = jnp.maximum(tiny, floats * (jnp.float32(1.0) - tiny) + tiny)
    return -jnp.log(-jnp.log(u))


def first_argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, axis=-1)` (first maximum; a NaN counts as the maximum) as two reductions."""
    top = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == top) | jnp.isnan(x)
    idx = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(hit, idx, x.shape[-1]), axis=-1)


# Up to this many bytes, the Gumbel noise of every decode step is drawn before the loop.
NOISE_TABLE_BYTES = 1 << 24


def noise_mode(key, config: SamplingConfig, batch: int, vocab: int) -> str:
    """How the sampler draws its Gumbel noise (the same values whichever): 'table' (every
    step's before the loop, up to NOISE_TABLE_BYTES), 'step' (per step, `gumbel_noise`) or 'jax'
    (`jax.random.categorical`, for keys and settings `gumbel_noise` does not reproduce)."""
    if not exact_gumbel_supported(key):
        return 'jax'
    small = config.max_new_tokens * batch * vocab * 4 <= NOISE_TABLE_BYTES
    return 'table' if small and not config.greedy else 'step'


def _decode_scanned(model) -> bool:
    """Whether the decode loop scans `model`'s stacked layers: when the current mesh and rules
    split its weights' embedding dimension (FSDP), so that every step gathers them."""
    mesh = jax.sharding.get_abstract_mesh()
    if not model.cfg.scan_layers or mesh.empty:
        return False
    spec = sharding.logical_to_spec(('embed',), (model.cfg.embed_dim,), mesh,
                                    sharding.current_rules())[0]
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    return math.prod(mesh.shape[a] for a in axes) > 1


@functools.partial(jax.jit, static_argnames=('graphdefs', 'config', 'combine', 'noise'))
def _generate(states, prompt, prompt_mask, key, *, graphdefs, config: SamplingConfig, combine,
              noise: str):
    models = [nnx.merge(g, s) for g, s in zip(graphdefs, states)]
    scanned = [_decode_scanned(m) for m in models]
    # Unsharded layers run one by one, sliced once here (slicing the stacked ones inside the
    # loop would copy every layer's weights at every step). FSDP-sharded layers run under the
    # scan, with a stacked cache: unrolled, the compiler starts every layer's all-gather at the
    # top of the step and holds the whole gathered model (Llama-3 8B: 0.41 GiB a layer, 15 GiB
    # of temporaries in the Nash-MD mixture sampler); scanned, one layer's weights are gathered
    # at a time, as in training.
    models = [m if scan else m.unstacked() for m, scan in zip(models, scanned)]
    b, p = prompt.shape
    n = config.max_new_tokens
    prompt_mask = prompt_mask.astype(jnp.int32)
    kv_mask = jnp.zeros((b, p + n), jnp.int32).at[:, :p].set(prompt_mask)
    positions = positions_from_mask(prompt_mask)

    caches, last_logits = [], []
    for m, scan in zip(models, scanned):
        cache = init_cache(m.cfg, b, p + n)
        cache = stack_cache(cache) if scan else cache
        h, cache = m.hidden(prompt, positions=positions, kv_mask=kv_mask, cache=cache,
                            cache_index=0)
        caches.append(cache)
        last_logits.append(next_token_logits(m, h[:, -1:]))
    next_position = jnp.sum(prompt_mask, axis=-1)  # position of the first response token
    if noise != 'jax':  # every step's fold_in(key, t) at once, as uint32[n, 2] key data
        step_keys = jax.random.key_data(
            jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(n, dtype=jnp.int32)))
    if noise == 'table' and not config.greedy:
        # All steps' noise in one parallel pass: per step, a [B, V] noise pass cost more in the
        # hand-off to the second thread than in arithmetic (tiny batch 1: half of a step).
        noise_table = jax.vmap(lambda kd: gumbel_noise(kd, last_logits[0].shape))(step_keys)

    def cond(carry):
        t, done = carry[0], carry[1]
        return (t < n) & ~jnp.all(done)

    def body(carry):
        t, done, kv_mask, caches, logits, tokens, logp, policy_logp = carry
        policy_lp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
        combined = combine(logits)
        if config.greedy:
            sample_lp = policy_lp
            tok = first_argmax(combined).astype(jnp.int32)
        else:
            sample_lp = process_logits(combined, temperature=config.temperature, top_k=config.top_k,
                                       top_p=config.top_p)
            if noise != 'jax':  # = jax.random.categorical(fold_in(key, t), sample_lp), bit for bit
                g = (noise_table[t] if noise == 'table' else gumbel_noise(
                    step_keys[t], sample_lp.shape))
                tok = first_argmax(g + sample_lp)
            else:
                tok = jax.random.categorical(jax.random.fold_in(key, t), sample_lp)
            tok = tok.astype(jnp.int32)
        live = ~done
        tok = jnp.where(live, tok, config.pad_id)
        tokens = tokens.at[:, t].set(tok)
        logp = logp.at[:, t].set(jnp.where(live, _gather(sample_lp, tok), 0.0))
        policy_logp = policy_logp.at[:, t].set(jnp.where(live, _gather(policy_lp, tok), 0.0))
        kv_mask = kv_mask.at[:, p + t].set(live.astype(jnp.int32))
        done = done | (tok == config.eos_id)
        new_caches, new_logits = [], []
        for m, cache in zip(models, caches):
            h, cache = m.hidden(tok[:, None], positions=(next_position + t)[:, None],
                                kv_mask=kv_mask, cache=cache, cache_index=p + t)
            new_caches.append(cache)
            new_logits.append(next_token_logits(m, h))
        return t + 1, done, kv_mask, new_caches, new_logits, tokens, logp, policy_logp

    carry = (jnp.int32(0), jnp.zeros(
        (b,), bool), kv_mask, caches, last_logits, jnp.full(
            (b, n), config.pad_id, jnp.int32), jnp.zeros(
                (b, n), jnp.float32), jnp.zeros((b, n), jnp.float32))
    _, _, kv_mask, _, _, tokens, logp, policy_logp = jax.lax.while_loop(cond, body, carry)
    mask = kv_mask[:, p:]
    return {
        'tokens': tokens, 'logprobs': logp, 'policy_logprobs': policy_logp, 'mask': mask,
        'lengths': jnp.sum(mask, axis=-1)
    }


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
                                         jnp.asarray(prompt_mask, jnp.int32), config.prompt_bucket,
                                         config.pad_id)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key: the same bits, typed
    noise = noise_mode(key, config, prompt.shape[0], models[0].cfg.vocab_size)
    return _generate(list(states), prompt, prompt_mask, key, graphdefs=tuple(graphdefs),
                     config=config, combine=combine, noise=noise)
