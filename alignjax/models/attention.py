"""Masked grouped-query attention: a dense reference and a memory-efficient blockwise kernel.

`attention` is the one entry point (training, scoring, prefill, decode). Query i, at absolute
index q_idx[i] among the S key positions, sees key j iff

    j <= q_idx[i]  and  kv_mask[b, j]  and  (window is None or q_idx[i] - j < window).

Logits are softcap(scale * q.k), softcap(x) = c tanh(x / c), in float32 from matmuls whose
inputs are in q.dtype. A row that sees no key (a left-pad query) is the uniform average of all S
values, as a softmax over logits that are all NEG_INF gives.

The blockwise kernel is flash attention (Dao et al. 2022, https://arxiv.org/abs/2205.14135;
backward as in FlashAttention-2, https://arxiv.org/abs/2307.08691) in plain JAX: an online
softmax over key blocks for each query block, with a hand-written backward that recomputes each
block's probabilities from the saved row max and row sum. Memory is O((T + S) * head_dim +
block_q * block_k) per head in the forward and the backward; no T x S array exists. Each query
block visits only the key blocks that its causal (and sliding-window) band can reach, so causal
attention does about half the work of the dense one and windowed attention O(T * window).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Finite "minus infinity" (as in layers.py): a fully masked row gets a uniform softmax, never NaN.
NEG_INF = -1e30
# Windows are clamped to this, so index arithmetic never overflows int32; any window at least
# this large is global for sequences shorter than it.
_MAX_WINDOW = 2**30
IMPLS = ('auto', 'xla', 'blockwise', 'cudnn', 'splash')


def _softcap(x, cap):
    return x if cap is None else cap * jnp.tanh(x / cap)


def visible(q_idx, k_idx, kv_mask, window):
    """[B, T, S] bool: query at absolute index q_idx[t] sees key k_idx[s] (the masking rule)."""
    allowed = k_idx[None, :] <= q_idx[:, None]
    if window is not None:
        window = jnp.minimum(jnp.asarray(window, jnp.int32), _MAX_WINDOW)
        allowed &= (q_idx[:, None] - k_idx[None, :]) < window
    return allowed[None] & kv_mask[:, None, :].astype(bool)


def _check(q, k, v, q_idx, kv_mask):
    b, t, h, hd = q.shape
    s, kv = k.shape[1], k.shape[2]
    if k.shape != (b, s, kv, hd) or v.shape != k.shape:
        raise ValueError(f'k and v must be [B, S, KV, {hd}] = {(b, s, kv, hd)}; got k {k.shape}, '
                         f'v {v.shape}')
    if h % kv:
        raise ValueError(f'query heads {h} must be a multiple of kv heads {kv}')
    if q_idx.shape != (t,):
        raise ValueError(f'q_idx must be [T] = [{t}]; got {q_idx.shape}')
    if kv_mask.shape != (b, s):
        raise ValueError(f'kv_mask must be [B, S] = {(b, s)}; got {kv_mask.shape}')
    return b, t, h, hd, s, kv, h // kv


def reference_attention(q, k, v, *, q_idx, kv_mask, scale, softcap=None, window=None):
    """Dense attention: materialises the [B, KV, G, T, S] logits. Same contract as `attention`.

    The shift (any constant per row gives the same softmax) is outside the gradient; the division
    runs after the value product, on [.., T, hd] instead of [.., T, S].
    """
    b, t, h, hd, s, kv, g = _check(q, k, v, q_idx, kv_mask)
    dt = q.dtype
    qg = q.reshape(b, t, kv, g, hd)
    logits = jnp.einsum('btkgh,bskh->bkgts', qg, k.astype(dt), preferred_element_type=jnp.float32)
    logits = _softcap(logits * scale, softcap)
    mask = visible(jnp.asarray(q_idx, jnp.int32), jnp.arange(s), kv_mask, window)
    logits = jnp.where(mask[:, None, None], logits, NEG_INF)
    shift = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    weights = jnp.exp(logits - shift)
    total = jnp.sum(weights, axis=-1)
    out = jnp.einsum('bkgts,bskh->btkgh', weights.astype(dt), v.astype(dt),
                     preferred_element_type=jnp.float32)
    out = out / jnp.transpose(total, (0, 3, 1, 2))[..., None]
    return out.reshape(b, t, h, hd).astype(dt)


class _Static(NamedTuple):
    scale: float
    softcap: float | None
    block_q: int
    block_k: int
    has_window: bool
    num_keys: int  # S before padding: the uniform average of a fully masked row is over these


# Internal layout: q [B, KV, G, Tp, hd], k and v [B, KV, Sp, hd] (each kv head's keys contiguous),
# q_idx [Tp] int32, kv_mask [B, Sp] bool, window an int32 scalar (unused without has_window).


def _key_block_range(qi, window, st: _Static):
    """[lo, hi): the key blocks that the queries at absolute indices `qi` can see. Holds for any
    q_idx, sorted or not: j <= max(qi) and, with a window, j > min(qi) - window."""
    hi = jnp.minimum(jnp.max(qi), st.num_keys - 1) // st.block_k + 1
    lo = jnp.int32(0)
    if st.has_window:
        lo = jnp.maximum(jnp.min(qi) - window + 1, 0) // st.block_k
    return lo, hi


def _block(q_blk, qi, kb, k, v, kv_mask, window, st: _Static):
    """Soft-capped logits [B, KV, G, bq, bk] (float32, unmasked) of one query block against key
    block kb, with the visibility mask [B, 1, 1, bq, bk] and the block's keys and values."""
    b, kvh, _, hd = k.shape
    start = jnp.asarray(kb * st.block_k, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    k_blk = jax.lax.dynamic_slice(k, (zero, zero, start, zero), (b, kvh, st.block_k, hd))
    v_blk = jax.lax.dynamic_slice(v, (zero, zero, start, zero), (b, kvh, st.block_k, hd))
    m_blk = jax.lax.dynamic_slice(kv_mask, (zero, start), (b, st.block_k))
    logits = jnp.einsum('bkgqh,bksh->bkgqs', q_blk, k_blk, preferred_element_type=jnp.float32)
    logits = _softcap(logits * st.scale, st.softcap)
    mask = visible(qi, start + jnp.arange(st.block_k), m_blk, window if st.has_window else None)
    return logits, mask[:, None, None], k_blk, v_blk


def _split_q(x, st: _Static):
    """[B, KV, G, Tp, ...] -> [nq, B, KV, G, bq, ...], query blocks leading for lax.map/scan."""
    b, kvh, g, tp = x.shape[:4]
    x = x.reshape(b, kvh, g, tp // st.block_q, st.block_q, *x.shape[4:])
    return jnp.moveaxis(x, 3, 0)


def _merge_q(x):
    return jnp.moveaxis(x, 0, 3).reshape(*x.shape[1:4], -1, *x.shape[5:])


def _forward(q, k, v, q_idx, kv_mask, window, st: _Static):
    """Online softmax: per query block, a loop over its key blocks carrying the running row max
    m, row sum l (of exp(logit - m)) and unnormalised output acc. Returns out (q.dtype) and the
    row statistics m, l [B, KV, G, Tp] that the backward recomputes probabilities from."""
    qi_blocks = q_idx.reshape(-1, st.block_q)

    def one_query_block(args):
        q_blk, qi = args

        def step(kb, carry):
            m, l, acc = carry
            logits, mask, _, v_blk = _block(q_blk, qi, kb, k, v, kv_mask, window, st)
            m_new = jnp.maximum(m, jnp.max(jnp.where(mask, logits, NEG_INF), axis=-1))
            p = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)
            alpha = jnp.exp(m - m_new)
            acc = alpha[..., None] * acc + jnp.einsum('bkgqs,bksh->bkgqh', p.astype(q.dtype), v_blk,
                                                      preferred_element_type=jnp.float32)
            return m_new, alpha * l + jnp.sum(p, axis=-1), acc

        # *_like keeps q's sharding on the carry (explicit mesh axes need it equal to the body's).
        row = jnp.zeros_like(q_blk[..., 0], jnp.float32)
        init = (row + NEG_INF, row, jnp.zeros_like(q_blk, jnp.float32))
        lo, hi = _key_block_range(qi, window, st)
        return jax.lax.fori_loop(lo, hi, step, init)

    m, l, acc = jax.lax.map(one_query_block, (_split_q(q, st), qi_blocks))
    m, l, acc = _merge_q(m), _merge_q(l), _merge_q(acc)
    # l >= 1 on a row that sees a key (its max term is exp(0)); l == 0 on one that sees none.
    uniform = (jnp.sum(v, axis=2, dtype=jnp.float32) / st.num_keys)[:, :, None, None]
    seen = (l > 0)[..., None]
    out = jnp.where(seen, acc / jnp.where(seen, l[..., None], 1.0), uniform)
    return out.astype(q.dtype), m, l


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _blockwise(q, k, v, q_idx, kv_mask, window, st: _Static):
    return _forward(q, k, v, q_idx, kv_mask, window, st)[0]


def _blockwise_fwd(q, k, v, q_idx, kv_mask, window, st):
    out, m, l = _forward(q, k, v, q_idx, kv_mask, window, st)
    return out, (q, k, v, q_idx, kv_mask, window, out, m, l)


def _blockwise_bwd(st: _Static, res, d_out):
    """p = exp(s - m) / l per block; dv += p^T do; ds = p (do.v - rowsum(do * out)); through the
    softcap ds *= 1 - (s / c)^2; dq += scale ds k; dk += scale ds^T q. The outer scan runs over
    query blocks and carries dk, dv [B, KV, Sp, hd] in float32; dq is per block."""
    q, k, v, q_idx, kv_mask, window, out, m, l = res
    dt = q.dtype
    seen = (l > 0)[..., None]
    # A row that sees no key is mean(v): its cotangent reaches v only, spread over the S keys.
    d_uniform = jnp.sum(jnp.where(seen, 0.0, d_out.astype(jnp.float32)), axis=(2, 3))
    d_out = jnp.where(seen, d_out, jnp.zeros_like(d_out))
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    l_safe = jnp.where(l > 0, l, 1.0)
    sp = k.shape[2]

    def one_query_block(carry, xs):
        q_blk, do_blk, delta_blk, m_blk, l_blk, qi = xs

        def step(kb, inner):
            dq_blk, dk, dv = inner
            logits, mask, k_blk, v_blk = _block(q_blk, qi, kb, k, v, kv_mask, window, st)
            p = jnp.where(mask, jnp.exp(logits - m_blk[..., None]) / l_blk[..., None], 0.0)
            dv_blk = jnp.einsum('bkgqs,bkgqh->bksh', p.astype(dt), do_blk,
                                preferred_element_type=jnp.float32)
            dp = jnp.einsum('bkgqh,bksh->bkgqs', do_blk, v_blk, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_blk[..., None])
            if st.softcap is not None:
                ds = ds * (1.0 - jnp.square(logits / st.softcap))
            ds = (ds * st.scale).astype(dt)
            dq_blk = dq_blk + jnp.einsum('bkgqs,bksh->bkgqh', ds, k_blk,
                                         preferred_element_type=jnp.float32)
            dk_blk = jnp.einsum('bkgqs,bkgqh->bksh', ds, q_blk, preferred_element_type=jnp.float32)
            zero = jnp.zeros((), jnp.int32)
            start = (zero, zero, jnp.asarray(kb * st.block_k, jnp.int32), zero)
            add = lambda acc, blk: jax.lax.dynamic_update_slice(
                acc,
                jax.lax.dynamic_slice(acc, start, blk.shape) + blk, start)
            return dq_blk, add(dk, dk_blk), add(dv, dv_blk)

        lo, hi = _key_block_range(qi, window, st)
        dq_blk, dk, dv = jax.lax.fori_loop(lo, hi, step,
                                           (jnp.zeros_like(q_blk, jnp.float32), *carry))
        return (dk, dv), dq_blk

    zeros = jnp.zeros_like(k, jnp.float32)
    xs = tuple(_split_q(x, st) for x in (q, d_out, delta, m, l_safe)) + (q_idx.reshape(
        -1, st.block_q),)
    (dk, dv), dq = jax.lax.scan(one_query_block, (zeros, zeros), xs)
    real_key = (jnp.arange(sp) < st.num_keys)[:, None]
    dv = dv + jnp.where(real_key, d_uniform[:, :, None, :] / st.num_keys, 0.0)
    return _merge_q(dq).astype(dt), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q, k, v, *, q_idx, kv_mask, scale, softcap=None, window=None, block_q=512,
                        block_k=512):
    """Flash attention without T x S arrays in the forward or the backward. Same contract as
    `attention`; blocks are clamped to T and S, and T and S padded up to block multiples (padded
    keys masked out, padded query rows dropped)."""
    b, t, h, hd, s, kv, g = _check(q, k, v, q_idx, kv_mask)
    bq, bk = min(block_q, t), min(block_k, s)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    st = _Static(float(scale), None if softcap is None else float(softcap), bq, bk, window
                 is not None, s)
    dt = q.dtype
    q_idx = jnp.asarray(q_idx, jnp.int32)
    # Padded query rows repeat the last index, so they widen no query block's key range.
    q_idx = jnp.pad(q_idx, (0, tp - t), mode='edge')
    kv_mask = jnp.pad(kv_mask.astype(bool), ((0, 0), (0, sp - s)))
    window = jnp.int32(0) if window is None else jnp.minimum(jnp.asarray(window, jnp.int32),
                                                             _MAX_WINDOW)
    qg = jnp.pad(q.reshape(b, t, kv, g, hd), ((0, 0), (0, tp - t), (0, 0), (0, 0), (0, 0)))
    qg = jnp.transpose(qg, (0, 2, 3, 1, 4))
    kv_major = lambda x: jnp.pad(jnp.swapaxes(x.astype(dt), 1, 2), ((0, 0), (0, 0), (0, sp - s),
                                                                    (0, 0)))
    out = _blockwise(qg, kv_major(k), kv_major(v), q_idx, kv_mask, window, st)
    out = jnp.transpose(out, (0, 3, 1, 2, 4))[:, :t]
    return out.reshape(b, t, h, hd)


def _cudnn_attention(q, k, v, *, q_idx, kv_mask, scale, softcap, window):
    """cuDNN flash attention through jax.nn.dot_product_attention, with the visibility rule
    passed as a boolean [B, 1, T, S] mask (cuDNN adds it as a large finite negative bias, so a
    fully masked row is near uniform). The mask is T x S: this path saves compute, not memory.
    Needs a GPU with cuDNN and float16/bfloat16 inputs; not exercised by the CPU test suite."""
    if softcap is not None:
        raise ValueError("impl='cudnn' does not support softcap (cuDNN has no logit soft-cap); "
                         "use impl='blockwise'")
    if window is not None and not isinstance(window, int):
        raise ValueError("impl='cudnn' needs window=None or a Python int, not a traced window; "
                         "use impl='blockwise'")
    s = k.shape[1]
    mask = visible(jnp.asarray(q_idx, jnp.int32), jnp.arange(s), kv_mask, window)[:, None]
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                        scale=scale, implementation='cudnn')


def attention(q, k, v, *, q_idx, kv_mask, scale, softcap=None, window=None, impl='auto',
              block_q=512, block_k=512, threshold=2048):
    """Masked grouped-query attention.

    Args:
      q: [B, T, H, hd]. k, v: [B, S, KV, hd], H a multiple of KV: query head h uses kv head
        h // (H // KV) (q reshaped [B, T, KV, H // KV, hd]).
      q_idx: int32 [T], each query's absolute index among the S keys: arange(T) for a plain
        forward (S == T), cache_index + arange(T) with a KV cache.
      kv_mask: [B, S], true for a real key.
      scale: Python float multiplying q.k.
      softcap: c in softcap(x) = c tanh(x / c) on the scaled logits, or None.
      window: None, a Python int or a traced int32 scalar (a per-layer value under lax.scan; a
        value >= S, e.g. 2**30, is global). Query i sees key j only if q_idx[i] - j < window.
      impl: 'xla' (dense reference), 'blockwise' (memory-efficient), 'auto' (blockwise when
        S >= threshold, else xla), 'cudnn' (GPU; no softcap, no traced window) or 'splash'
        (unsupported, raises).
      block_q, block_k: blockwise tile sizes, clamped to T and S.

    Returns:
      [B, T, H, hd] in q.dtype. A row that sees no key is the mean of the S values.
    """
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}; got {impl!r}')
    if impl == 'auto':
        impl = 'blockwise' if k.shape[1] >= threshold else 'xla'
    kw = dict(q_idx=q_idx, kv_mask=kv_mask, scale=scale, softcap=softcap, window=window)
    if impl == 'xla':
        return reference_attention(q, k, v, **kw)
    if impl == 'blockwise':
        return blockwise_attention(q, k, v, block_q=block_q, block_k=block_k, **kw)
    if impl == 'cudnn':
        return _cudnn_attention(q, k, v, **kw)
    # Splash (jax.experimental.pallas.ops.tpu.splash_attention) builds its block-sparsity from a
    # static NumPy mask when the kernel is made; here q_idx, kv_mask and window are traced, and
    # its fully masked rows are not the uniform average this contract promises.
    raise ValueError("impl='splash' is not supported: the TPU splash kernel needs a static mask "
                     "(q_idx and window known when the kernel is built) and TPU hardware; use "
                     "impl='blockwise'")
