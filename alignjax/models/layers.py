"""Building blocks of the decoder: RMSNorm, RoPE, grouped-query attention with a KV cache, gated MLP.

Every parameter is an `nnx.Param` carrying `axes`, a tuple of logical axis names that
`alignjax.sharding` maps onto the device mesh. Norms, softmax and RoPE run in float32 whatever the
compute dtype; matmuls run in `cfg.dtype`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from alignjax.models import attention as attention_lib
from alignjax.models import lora as lora_lib
from alignjax.models import quant
from alignjax.models.config import ATTENTION_THRESHOLD, ModelConfig
from alignjax.sharding import constrain

# Logical axes of activations (resolved by `alignjax.sharding`'s rules table, like parameters).
BTD = ('batch', 'length', 'act_embed')
BTHK = ('batch', 'length', 'act_heads', None)
BTKK = ('batch', 'length', 'act_kv_heads', None)
BTF = ('batch', 'length', 'act_mlp')

# Finite "minus infinity": a fully masked row (a left-pad query) gets a uniform softmax, never NaN.
NEG_INF = -1e30


def param(rngs: nnx.Rngs, shape, axes, *, std: float, dtype) -> nnx.Param:
    """A normally initialised parameter with logical axis names (std 0 gives zeros)."""
    if std == 0.0:
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, axes=tuple(axes))


def ones_param(shape, axes, *, dtype) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, dtype), axes=tuple(axes))


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


class RMSNorm(nnx.Module):
    """y = x / rms(x) * w, or * (1 + w) for Gemma (`offset`), computed in float32."""
    def __init__(self, dim: int, *, eps: float, offset: bool, param_dtype, axis_name='norm'):
        self.eps = eps
        self.offset = offset
        init = jnp.zeros if offset else jnp.ones
        self.scale = nnx.Param(init((dim,), param_dtype), axes=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        w = self.scale[...].astype(jnp.float32)
        return (x * (1.0 + w if self.offset else w)).astype(dtype)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> jax.Array:
    """Per-pair rotation frequencies, with optional linear or Llama-3 frequency scaling."""
    inv = 1.0 / (theta**(jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv
    scaling = dict(scaling)
    kind = scaling.get('type', scaling.get('rope_type'))
    factor = float(scaling['factor'])
    if kind == 'linear':
        return inv / factor
    if kind == 'llama3':
        low, high = float(scaling['low_freq_factor']), float(scaling['high_freq_factor'])
        old_len = float(scaling['original_max_position'])
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > old_len / low, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return jnp.where(medium, smoothed, scaled)
    raise ValueError(f'Unknown model.rope_scaling type {kind!r}; expected linear or llama3')


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates x[b, t, h, :] by angle positions[b, t] * inv_freq (halves convention, as in HF)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query attention; with a cache, writes this call's keys at `cache_index`.

    Masking: query i (absolute index q_i in the cache, or in the sequence without one) sees key j
    iff j <= q_i, kv_mask[b, j] is set, and, on local layers, q_i - j < sliding_window. Prompts are
    left-padded and responses right-padded, so valid tokens are contiguous and index distances
    equal position distances.
    """
    def __init__(self, cfg: ModelConfig, *, local: bool, rngs: nnx.Rngs):
        d, h, kv, hd = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd = cfg.jnp_param_dtype
        self.cfg = cfg
        self.local = local
        self.q_proj = param(rngs, (d, h, hd), ('embed', 'heads', 'head_dim'), std=d**-0.5, dtype=pd)
        self.k_proj = param(rngs, (d, kv, hd), ('embed', 'kv_heads', 'head_dim'), std=d**-0.5,
                            dtype=pd)
        self.v_proj = param(rngs, (d, kv, hd), ('embed', 'kv_heads', 'head_dim'), std=d**-0.5,
                            dtype=pd)
        self.o_proj = param(rngs, (h, hd, d), ('heads', 'head_dim', 'embed'), std=(h * hd)**-0.5,
                            dtype=pd)
        lora = lambda t, i, ia, o, oa, ie, oe: lora_lib.adapter_for(cfg, t, i, ia, o, oa, ie, oe,
                                                                    rngs)
        self.q_lora = lora('q', (d,), ('embed',), (h, hd), ('heads', 'head_dim'), 'btd,dr->btr',
                           'btr,rhk->bthk')
        self.k_lora = lora('k', (d,), ('embed',), (kv, hd), ('kv_heads', 'head_dim'), 'btd,dr->btr',
                           'btr,rhk->bthk')
        self.v_lora = lora('v', (d,), ('embed',), (kv, hd), ('kv_heads', 'head_dim'), 'btd,dr->btr',
                           'btr,rhk->bthk')
        self.o_lora = lora('o', (h, hd), ('heads', 'head_dim'), (d,), ('embed',), 'bthk,hkr->btr',
                           'btr,rd->btd')
        if cfg.base_quant:
            quant.store_int8(self, ('q_proj', 'k_proj', 'v_proj', 'o_proj'))
        if cfg.attention_bias:
            self.q_bias = param(rngs, (h, hd), ('heads', 'head_dim'), std=0.0, dtype=pd)
            self.k_bias = param(rngs, (kv, hd), ('kv_heads', 'head_dim'), std=0.0, dtype=pd)
            self.v_bias = param(rngs, (kv, hd), ('kv_heads', 'head_dim'), std=0.0, dtype=pd)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, eps=cfg.norm_eps, offset=cfg.norm_offset, param_dtype=pd)
            self.k_norm = RMSNorm(hd, eps=cfg.norm_eps, offset=cfg.norm_offset, param_dtype=pd)
        # A Python float, not an array: arrays on a module would become state.
        self.rope_theta, self.rope_scaling = cfg.rope(local)

    def __call__(self, x, *, positions, kv_mask, cache=None, cache_index=None, layer=None):
        """`layer`: None, or (local, inv_freq) of the layer this call computes, given as arrays
        when the layers run under a scan (one module, each layer's flags as data)."""
        cfg = self.cfg
        dt = cfg.jnp_dtype
        x = x.astype(dt)
        q = _adapted(jnp.einsum('btd,dhk->bthk', x, quant.weight(self, 'q_proj', dt)), self.q_lora,
                     x)
        k = _adapted(jnp.einsum('btd,dhk->bthk', x, quant.weight(self, 'k_proj', dt)), self.k_lora,
                     x)
        v = _adapted(jnp.einsum('btd,dhk->bthk', x, quant.weight(self, 'v_proj', dt)), self.v_lora,
                     x)
        if cfg.attention_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        q, k, v = constrain(q, BTHK), constrain(k, BTKK), constrain(v, BTKK)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if layer is None:
            local = self.local
            inv_freq = rope_inverse_frequencies(cfg.head_dim, self.rope_theta, self.rope_scaling)
        else:
            local, inv_freq = layer
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)

        b, t = x.shape[:2]
        if cache is not None:
            return self._cached_call(q, k, v, kv_mask=kv_mask, cache=cache, cache_index=cache_index,
                                     local=local)
        impl = self._kernel(t, t)
        if impl != 'xla':
            out = self._kernel_attention(q, k, v, jnp.arange(t), kv_mask, local, impl)
            return constrain(self._out(out, dt), BTD), None
        # Keys and values kv-head-major [B, kv, S, hd]: each head's keys contiguous for the dots.
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        kv, g, hd = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
        q = q.reshape(b, t, kv, g, hd)
        logits = jnp.einsum('btkgh,bksh->bkgts', q, k.astype(dt),
                            preferred_element_type=jnp.float32)
        weights, total = self._softmax_parts(logits, self._mask(jnp.arange(t), t, kv_mask, local))
        out = jnp.einsum('bkgts,bksh->btkgh', weights.astype(dt), v.astype(dt))
        out = (out.astype(jnp.float32) / jnp.transpose(total, (0, 3, 1, 2))[..., None]).astype(dt)
        out = constrain(out.reshape(b, t, cfg.num_heads, hd), BTHK)
        return constrain(self._out(out, dt), BTD), None

    def _out(self, out, dt):
        """The output projection of the heads [B, T, H, hd] (with its adapter)."""
        return _adapted(jnp.einsum('bthk,hkd->btd', out, quant.weight(self, 'o_proj', dt)),
                        self.o_lora, out)

    def _kernel(self, queries: int, keys: int) -> str:
        """The attention kernel of a call with this many queries and keys: `cfg.attention`,
        with 'auto' blockwise from `ATTENTION_THRESHOLD` keys (never for one query: a decode
        step's scores are one row a head)."""
        impl = self.cfg.attention
        if impl == 'auto':
            return 'blockwise' if keys >= ATTENTION_THRESHOLD and queries > 1 else 'xla'
        return impl

    def _kernel_attention(self, q, k, v, q_idx, kv_mask, local, impl):
        """[B, T, H, hd] through `attention_lib.attention` (q [B, T, H, hd], k and v
        [B, S, KV, hd]), with this layer's scale, soft-cap and (traced or static) window."""
        cfg = self.cfg
        window = cfg.sliding_window
        if window is None or local is False:
            window = None
        elif local is not True:  # traced (layers under a scan): global layers see everything
            window = jnp.where(local, window, 2**30)
        scale = cfg.query_scale if cfg.query_scale is not None else cfg.head_dim**-0.5
        out = attention_lib.attention(q, k.astype(q.dtype), v.astype(q.dtype), q_idx=q_idx,
                                      kv_mask=kv_mask, scale=float(scale),
                                      softcap=cfg.attn_logit_softcap, window=window, impl=impl)
        return constrain(out, BTHK)

    def _mask(self, q_idx, length: int, kv_mask, local):
        """[B, T, S]: query at absolute index q_idx[i] sees key j <= q_idx[i] that is real
        (kv_mask) and, on local layers, within the sliding window. `local` is a Python bool, or
        a traced one (layers under a scan)."""
        k_idx = jnp.arange(length)
        allowed = k_idx[None, :] <= q_idx[:, None]
        if self.cfg.sliding_window is not None and local is not False:
            in_window = (q_idx[:, None] - k_idx[None, :]) < self.cfg.sliding_window
            allowed &= in_window if local is True else (in_window | ~local)
        return allowed[None] & kv_mask[:, None, :].astype(bool)

    def _softmax_parts(self, logits, mask):
        """Unnormalised softmax weights [B, kv, G, T, S] and their row sums [B, kv, G, T] of
        scaled, soft-capped, masked logits. The caller divides after the value product (the
        division then runs on [.., T, head_dim] instead of [.., T, S]); the shift (any constant
        per row gives the same softmax) is outside the gradient; a fully masked row stays
        uniform, as softmax leaves it."""
        cfg = self.cfg
        scale = cfg.query_scale if cfg.query_scale is not None else cfg.head_dim**-0.5
        logits = softcap(logits * scale, cfg.attn_logit_softcap)
        logits = jnp.where(mask[:, None, None], logits, NEG_INF)
        shift = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
        weights = jnp.exp(logits - shift)
        return weights, jnp.sum(weights, axis=-1)

    def _cached_call(self, q, k, v, *, kv_mask, cache, cache_index, local):
        """Attention through a KV cache of [B * kv_heads, S, head_dim] arrays (`init_cache`),
        writing this call's keys and values at `cache_index`.

        (batch, kv head) are one dimension, so that the array a decode loop carries, the one
        written and the one the dots read have one shape: with [B, kv, S, hd] XLA:CPU saw a
        reshape between the write and the dots at batch 1, duplicated the in-place write into
        the dots' operand and copied every layer's cache at every decode step (5x the attention
        time).
        """
        cfg = self.cfg
        dt = cfg.jnp_dtype
        b, t = q.shape[:2]
        kv, g, hd = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
        rows = lambda x: jnp.swapaxes(x, 1, 2).reshape(b * kv, t, hd).astype(cache['k'].dtype)
        keys = jax.lax.dynamic_update_slice(cache['k'], rows(k), (0, cache_index, 0))
        values = jax.lax.dynamic_update_slice(cache['v'], rows(v), (0, cache_index, 0))
        s = keys.shape[1]
        impl = self._kernel(t, s)
        if impl != 'xla':  # prefill or grouped scoring over many keys: [B, S, KV, hd] views
            kv_view = lambda x: jnp.swapaxes(x.reshape(b, kv, s, hd), 1, 2)
            out = self._kernel_attention(q, kv_view(keys), kv_view(values),
                                         cache_index + jnp.arange(t), kv_mask, local, impl)
            out = self._out(out, dt)
            return out, {'k': keys, 'v': values}
        q = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b * kv, g * t, hd)
        logits = jnp.einsum('nqh,nsh->nqs', q, keys.astype(dt), preferred_element_type=jnp.float32)
        weights, total = self._softmax_parts(
            logits.reshape(b, kv, g, t, s),
            self._mask(cache_index + jnp.arange(t), s, kv_mask, local))
        out = jnp.einsum('nqs,nsh->nqh',
                         weights.reshape(b * kv, g * t, s).astype(dt), values.astype(dt))
        out = (out.reshape(b, kv, g, t, hd).astype(jnp.float32) / total[..., None]).astype(dt)
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, cfg.num_heads, hd)
        out = self._out(out, dt)
        return out, {'k': keys, 'v': values}


class MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x)), SwiGLU or GeGLU."""
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, pd = cfg.embed_dim, cfg.mlp_dim, cfg.jnp_param_dtype
        self.cfg = cfg
        self.gate_proj = param(rngs, (d, f), ('embed', 'mlp'), std=d**-0.5, dtype=pd)
        self.up_proj = param(rngs, (d, f), ('embed', 'mlp'), std=d**-0.5, dtype=pd)
        self.down_proj = param(rngs, (f, d), ('mlp', 'embed'), std=f**-0.5, dtype=pd)
        lora = lambda t, i, ia, o, oa: lora_lib.adapter_for(cfg, t, (i,), (ia,), (o,), (
            oa,), f'bt{ia[0]},{ia[0]}r->btr', f'btr,r{oa[0]}->bt{oa[0]}', rngs)
        self.gate_lora = lora('gate', d, 'embed', f, 'mlp')
        self.up_lora = lora('up', d, 'embed', f, 'mlp')
        self.down_lora = lora('down', f, 'mlp', d, 'embed')
        if cfg.base_quant:
            quant.store_int8(self, ('gate_proj', 'up_proj', 'down_proj'))

    def __call__(self, x):
        dt = self.cfg.jnp_dtype
        x = x.astype(dt)
        proj = lambda y, name: _adapted(y @ quant.weight(self, f'{name}_proj', dt),
                                        getattr(self, f'{name}_lora'), y)
        gate = constrain(proj(x, 'gate'), BTF)
        act = jax.nn.silu(gate) if self.cfg.activation == 'silu' else jax.nn.gelu(
            gate, approximate=True)
        hidden = constrain(act * proj(x, 'up'), BTF)
        return constrain(proj(hidden, 'down'), BTD)


def _adapted(y: jax.Array, adapter, x: jax.Array) -> jax.Array:
    """y = x W, plus the adapter's scale * (x A) B when there is one."""
    return y if adapter is None else y + adapter(x).astype(y.dtype)


class Block(nnx.Module):
    """Pre-norm decoder block, with Gemma-2/3's optional post-norms."""
    def __init__(self, cfg: ModelConfig, *, layer: int, rngs: nnx.Rngs):
        pd = cfg.jnp_param_dtype
        norm = lambda: RMSNorm(cfg.embed_dim, eps=cfg.norm_eps, offset=cfg.norm_offset, param_dtype=
                               pd)
        self.attn_norm = norm()
        self.attn = Attention(cfg, local=cfg.is_local_layer(layer), rngs=rngs)
        self.mlp_norm = norm()
        self.mlp = MLP(cfg, rngs=rngs)
        self.post_norms = cfg.post_norms
        if cfg.post_norms:
            self.attn_post_norm = norm()
            self.mlp_post_norm = norm()

    def __call__(self, x, *, positions, kv_mask, cache=None, cache_index=None, layer=None):
        y, cache = self.attn(self.attn_norm(x), positions=positions, kv_mask=kv_mask, cache=cache,
                             cache_index=cache_index, layer=layer)
        if self.post_norms:
            y = self.attn_post_norm(y)
        x = constrain(x + y.astype(x.dtype), BTD)
        y = self.mlp(self.mlp_norm(x))
        if self.post_norms:
            y = self.mlp_post_norm(y)
        return constrain(x + y.astype(x.dtype), BTD), cache
