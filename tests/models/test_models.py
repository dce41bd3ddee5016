"""Tests for alignjax.models: an independent NumPy decoder, RoPE, norms, every config switch, heads.

The NumPy reference below is written from the equations (RMSNorm, rotate-half RoPE with Llama-3
frequency scaling, grouped-query attention with causal / padding / sliding-window masks and
soft-caps, gated MLP, tied or untied output) and reads only the parameter arrays of a model, so a
mistake in the JAX model cannot hide in a shared helper.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignjax.models import (PRESETS, Decoder, PreferenceModel, RewardModel, ValueModel, init_cache,
                             positions_from_mask, response_logprobs)
from alignjax.models import layers
from alignjax.models.transformer import unstack_layers

TINY = PRESETS['tiny']

# name -> ModelConfig overrides of the tiny preset (2 layers, 4 query heads, 2 KV heads).
VARIANTS = {
    'base': {},
    'mha': {'num_kv_heads': 4},
    'mqa': {'num_kv_heads': 1},
    'gelu_tanh': {'activation': 'gelu_tanh'},
    'norm_offset': {'norm_offset': True},
    'post_norms': {'post_norms': True},
    'qk_norm': {'qk_norm': True},
    'attention_bias': {'attention_bias': True},
    'sliding_period2': {'sliding_window': 3, 'local_layer_period': 2, 'rope_local_theta': 100.0},
    'sliding_all_local': {'sliding_window': 3, 'local_layer_period': 1},
    'attn_softcap': {'attn_logit_softcap': 0.5},
    'final_softcap': {'final_logit_softcap': 2.0},
    'embed_scale': {'embed_scale': True},
    'untied': {'tie_embeddings': False},
    'query_scale': {'query_scale': 0.5},
    'rope_linear': {'rope_scaling': {'type': 'linear', 'factor': 4.0}},
    'rope_llama3': {
        'rope_scaling': {
            'type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position': 64
        }
    },
    'gemma_like': {
        'activation': 'gelu_tanh', 'norm_offset': True, 'post_norms': True, 'qk_norm': True,
        'attention_bias': True, 'sliding_window': 4, 'local_layer_period': 2,
        'rope_local_theta': 100.0, 'query_scale': 0.3, 'attn_logit_softcap': 1.0,
        'final_logit_softcap': 3.0, 'embed_scale': True, 'tie_embeddings': False, 'num_kv_heads': 1
    },
}

# ----------------------------------------------------------------------------- NumPy reference


def ref_rmsnorm(x, w, eps, offset):
    y = x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)
    return y * ((1.0 + w) if offset else w)


def ref_inv_freq(head_dim, theta, scaling=None):
    """Rotation frequency of each pair, with linear or Llama-3 ("rope_type: llama3") scaling."""
    freqs = [theta**(-2.0 * i / head_dim) for i in range(head_dim // 2)]
    if scaling is None:
        return np.array(freqs)
    s = dict(scaling)
    factor = s['factor']
    if s['type'] == 'linear':
        return np.array([f / factor for f in freqs])
    assert s['type'] == 'llama3'
    old = s['original_max_position']
    low, high = s['low_freq_factor'], s['high_freq_factor']
    out = []
    for f in freqs:
        wavelength = 2.0 * math.pi / f
        if wavelength < old / high:  # high frequency: kept
            out.append(f)
        elif wavelength > old / low:  # low frequency: interpolated by the factor
            out.append(f / factor)
        else:  # in between: a linear blend in 1/wavelength
            smooth = (old / wavelength - low) / (high - low)
            out.append((1.0 - smooth) * f / factor + smooth * f)
    return np.array(out)


def ref_rope(x, positions, inv_freq):
    """x[T, H, D]: each pair (x[i], x[i + D/2]) turned by angle positions[T] * inv_freq[i]."""
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    z = z * np.exp(1j * positions[:, None, None] * inv_freq[None, None, :])
    return np.concatenate([z.real, z.imag], axis=-1)


def ref_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def ref_silu(x):
    return x / (1.0 + np.exp(-x))


def ref_is_local(cfg, layer):
    if cfg.sliding_window is None:
        return False
    return cfg.local_layer_period == 1 or (layer + 1) % cfg.local_layer_period != 0


def ref_decoder(cfg, p, tokens, mask):
    """(final-norm hidden [B, T, D], logits [B, T, V]) in float64 from parameter arrays `p`.

    `p` maps parameter paths (tuples, as in `nnx.State.flat_state()`) to arrays. Queries with no
    visible key (left pads) get a zero attention output; only real positions are compared.
    """
    cap = lambda s, c: s if c is None else c * np.tanh(s / c)
    rms = lambda x, w: ref_rmsnorm(x, w, cfg.norm_eps, cfg.norm_offset)
    hidden, logits = [], []
    h_, kv_ = cfg.num_heads, cfg.num_kv_heads
    for b in range(tokens.shape[0]):
        m = mask[b].astype(bool)
        t = len(m)
        pos = np.maximum(np.cumsum(m) - 1, 0).astype(np.float64)
        x = p[('embedding',)][tokens[b]]
        if cfg.embed_scale:
            x = x * math.sqrt(cfg.embed_dim)
        for i in range(cfg.num_layers):
            lp = lambda *name: p[('layers', i) + name]
            a_in = rms(x, lp('attn_norm', 'scale'))
            q = np.einsum('td,dhk->thk', a_in, lp('attn', 'q_proj'))
            k = np.einsum('td,dhk->thk', a_in, lp('attn', 'k_proj'))
            v = np.einsum('td,dhk->thk', a_in, lp('attn', 'v_proj'))
            if cfg.attention_bias:
                q = q + lp('attn', 'q_bias')
                k, v = k + lp('attn', 'k_bias'), v + lp('attn', 'v_bias')
            if cfg.qk_norm:
                q, k = rms(q, lp('attn', 'q_norm', 'scale')), rms(k, lp('attn', 'k_norm', 'scale'))
            local = ref_is_local(cfg, i)
            theta = cfg.rope_local_theta if (local and cfg.rope_local_theta) else cfg.rope_theta
            inv = ref_inv_freq(cfg.head_dim, theta, cfg.rope_scaling)
            q, k = ref_rope(q, pos, inv), ref_rope(k, pos, inv)
            scale = cfg.query_scale if cfg.query_scale is not None else cfg.head_dim**-0.5
            qi, kj = np.arange(t)[:, None], np.arange(t)[None, :]
            allowed = (kj <= qi) & m[None, :]
            if local:
                allowed &= (qi - kj) < cfg.sliding_window
            out = np.zeros((t, h_, cfg.head_dim))
            for head in range(h_):
                g = head // (h_ // kv_)  # query head -> its key/value head
                s = cap(q[:, head] @ k[:, g].T * scale, cfg.attn_logit_softcap)
                s = np.where(allowed, s, -np.inf)
                top = np.max(s, axis=-1, keepdims=True)
                w = np.where(allowed, np.exp(s - np.where(np.isfinite(top), top, 0.0)), 0.0)
                w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
                out[:, head] = w @ v[:, g]
            a = np.einsum('thk,hkd->td', out, lp('attn', 'o_proj'))
            if cfg.post_norms:
                a = rms(a, lp('attn_post_norm', 'scale'))
            x = x + a
            m_in = rms(x, lp('mlp_norm', 'scale'))
            gate = m_in @ lp('mlp', 'gate_proj')
            act = ref_silu(gate) if cfg.activation == 'silu' else ref_gelu_tanh(gate)
            y = (act * (m_in @ lp('mlp', 'up_proj'))) @ lp('mlp', 'down_proj')
            if cfg.post_norms:
                y = rms(y, lp('mlp_post_norm', 'scale'))
            x = x + y
        h = rms(x, p[('final_norm', 'scale')])
        hidden.append(h)
        if ('embedding',) in p and (('lm_head',) in p or cfg.tie_embeddings):
            w_out = p[('embedding',)].T if cfg.tie_embeddings else p[('lm_head',)]
            logits.append(cap(h @ w_out, cfg.final_logit_softcap))
    return np.stack(hidden), (np.stack(logits) if logits else None)


# ----------------------------------------------------------------------------- helpers


def np_params(model, prefix=()):
    """{path: float64 array} of a model's parameters (paths below `prefix`, prefix stripped)."""
    out = {}
    state = nnx.state(model, nnx.Param)
    if model_cfg(model).scan_layers:  # the reference reads layer i as ('layers', i, ...)
        state = unstack_layers(state, model_cfg(model).num_layers)
    for path, var in state.flat_state():
        path = tuple(path)
        if path[:len(prefix)] == prefix:
            out[path[len(prefix):]] = np.asarray(var[...], np.float64)
    return out


def perturb(model, seed=0):
    """Random norm scales and biases (their inits are trivial) and an embedding large enough
    that logits exceed the soft-caps; projections keep the model's own random init."""
    rng = np.random.RandomState(seed)
    state = nnx.state(model, nnx.Param)
    for path, var in state.flat_state():
        name, shape = path[-1], var[...].shape
        if name == 'scale':
            offset = model_cfg(model).norm_offset
            new = (0.0 if offset else 1.0) + 0.2 * rng.randn(*shape)
        elif name in ('q_bias', 'k_bias', 'v_bias', 'value_head', 'value_bias', 'reward_bias',
                      'pair_bias'):
            new = 0.2 * rng.randn(*shape)
        elif name in ('embedding', 'lm_head'):
            new = 0.15 * rng.randn(*shape)
        else:
            continue
        var.value = jnp.asarray(new, var[...].dtype)
    nnx.update(model, state)
    return model


def model_cfg(model):
    return model.cfg if isinstance(model, Decoder) else model.backbone.cfg


def make(cls=Decoder, seed=0, perturb_seed=0, **overrides):
    model = cls(TINY.replace(**overrides), rngs=nnx.Rngs(seed))
    return perturb(model, perturb_seed)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, *args):
    return nnx.merge(graphdef, state)(*args)


def apply(model, *args):
    """Jitted `model(*args)`; one compile per model structure and input shapes."""
    graphdef, state = nnx.split(model)
    return np.asarray(_apply(graphdef, state, *args))


def inputs():
    """tokens, mask [3, 12]: a full row, a left-padded row, a left- and right-padded row."""
    rng = np.random.RandomState(0)
    tokens = rng.randint(3, TINY.vocab_size, (3, 12)).astype(np.int32)
    mask = np.ones((3, 12), np.int32)
    mask[1, :4] = 0
    mask[2, :2] = 0
    mask[2, -3:] = 0
    return tokens * mask, mask


def assert_real_close(actual, expected, mask, tol=1e-5):
    sel = mask.astype(bool)
    np.testing.assert_allclose(actual[sel], expected[sel], rtol=tol, atol=tol)


def nll_loss(model, tokens, mask):
    """Mean response NLL, treating the second half of each sequence as the response."""
    p = tokens.shape[1] // 2
    logp = response_logprobs(model, tokens[:, :p], mask[:, :p], tokens[:, p:], mask[:, p:])
    return -jnp.sum(logp) / jnp.sum(mask[:, p:])


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grad(graphdef, state, tokens, mask):
    return jax.value_and_grad(lambda s: nll_loss(nnx.merge(graphdef, s), tokens, mask))(state)


# ----------------------------------------------------------------------------- norms and RoPE


@pytest.mark.parametrize('offset', [False, True])
def test_rmsnorm_matches_numpy(offset):
    rng = np.random.RandomState(1)
    norm = layers.RMSNorm(8, eps=1e-5, offset=offset, param_dtype=jnp.float32)
    w = rng.randn(8)
    norm.scale.value = jnp.asarray(w, jnp.float32)
    x = 3.0 * rng.randn(2, 5, 8)
    got = np.asarray(norm(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, ref_rmsnorm(x, w, 1e-5, offset), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    'head_dim,theta,scaling',
    [
        (16, 10_000.0, None),
        (64, 500_000.0, {'type': 'linear', 'factor': 4.0}),
        # Llama-3.2-1B and Llama-3.1-8B frequency scaling.
        (64, 500_000.0, {
            'type': 'llama3', 'factor': 32.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position': 8192
        }),
        (128, 500_000.0, {
            'type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position': 8192
        }),
    ])
def test_rope_inverse_frequencies_match_numpy(head_dim, theta, scaling):
    got = np.asarray(layers.rope_inverse_frequencies(head_dim, theta, scaling))
    want = ref_inv_freq(head_dim, theta, scaling)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    if scaling is not None and scaling['type'] == 'llama3':
        # The case is only a test if all three regimes occur: kept, divided, blended.
        plain = ref_inv_freq(head_dim, theta)
        kept = np.isclose(want, plain, rtol=1e-12)
        divided = np.isclose(want, plain / scaling['factor'], rtol=1e-12)
        assert kept.any() and divided.any() and (~kept & ~divided).any()


def test_apply_rope_matches_numpy_and_is_relative():
    rng = np.random.RandomState(2)
    inv = ref_inv_freq(16, 10_000.0)
    x = rng.randn(2, 7, 3, 16)
    positions = rng.randint(0, 64, (2, 7))
    got = np.asarray(
        layers.apply_rope(jnp.asarray(x, jnp.float32), jnp.asarray(positions),
                          jnp.asarray(inv, jnp.float32)))
    for b in range(2):
        np.testing.assert_allclose(got[b], ref_rope(x[b], positions[b], inv), atol=2e-5)
    # q.k after rotation depends on the position difference only.
    q, k = jnp.asarray(x[:1, :1], jnp.float32), jnp.asarray(x[1:, :1], jnp.float32)
    rot = lambda v, pos: layers.apply_rope(v, jnp.full((1, 1), pos), jnp.asarray(inv, jnp.float32))
    dots = [float(jnp.sum(rot(q, m) * rot(k, m - 3))) for m in (3, 10, 40)]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-5, atol=1e-5)
    assert abs(float(jnp.sum(rot(q, 10) * rot(k, 3))) - dots[0]) > 1e-3


# ----------------------------------------------------------------------------- decoder vs NumPy


@pytest.mark.parametrize('name', list(VARIANTS))
def test_decoder_matches_numpy_reference(name):
    overrides = VARIANTS[name]
    model = make(**overrides)
    cfg = model.cfg
    tokens, mask = inputs()
    logits = apply(model, tokens, mask)
    assert logits.shape == (3, 12, cfg.vocab_size) and logits.dtype == np.float32
    p = np_params(model)
    _, want = ref_decoder(cfg, p, tokens, mask)
    assert_real_close(logits, want, mask)
    if name in ('base', 'mha', 'mqa'):
        return
    # The switch matters: the same parameters under the switched-off config give other logits.
    off = TINY.replace(**{key: getattr(TINY, key) for key in overrides})
    if off.num_kv_heads != cfg.num_kv_heads:
        off = off.replace(num_kv_heads=cfg.num_kv_heads)
    _, without = ref_decoder(off, p, tokens, mask)
    sel = mask.astype(bool)
    assert np.max(np.abs(logits[sel] - without[sel])) > 1e-3, name


@pytest.mark.parametrize('kv', [1, 2])
def test_grouped_query_attention_equals_mha_with_shared_heads(kv):
    """A GQA/MQA model is an MHA model whose key/value heads are repeated over each group."""
    gqa = make(num_kv_heads=kv)
    mha = make(num_kv_heads=4)
    groups = 4 // kv
    state = nnx.state(mha, nnx.Param)
    src = dict(nnx.state(gqa, nnx.Param).flat_state())
    for path, var in state.flat_state():
        value = src[path][...]
        if path[-1] in ('k_proj', 'v_proj'):
            value = jnp.repeat(value, groups, axis=-2)  # head h reads kv head h // groups
        var.value = value
    nnx.update(mha, state)
    tokens, mask = inputs()
    assert_real_close(apply(gqa, tokens, mask), apply(mha, tokens, mask), mask)


# ----------------------------------------------------------------------------- individual switches


def _flip(tokens, index):
    out = tokens.copy()
    out[:, index] = (out[:, index] + 7) % TINY.vocab_size
    return out


def test_sliding_window_limits_what_a_position_sees():
    rng = np.random.RandomState(3)
    tokens = rng.randint(3, TINY.vocab_size, (2, 10)).astype(np.int32)
    mask = np.ones_like(tokens)
    last = 9
    # One local layer with window 3: position 9 sees tokens 7, 8, 9 and nothing before.
    local1 = make(num_layers=1, sliding_window=3)
    global1 = make(num_layers=1)
    nnx.update(global1, nnx.state(local1))
    base = apply(local1, tokens, mask)
    np.testing.assert_array_equal(apply(local1, _flip(tokens, 6), mask)[:, last], base[:, last])
    assert np.abs(apply(local1, _flip(tokens, 7), mask)[:, last] - base[:, last]).max() > 1e-4
    g_base = apply(global1, tokens, mask)
    assert np.abs(apply(global1, _flip(tokens, 6), mask)[:, last] - g_base[:, last]).max() > 1e-4
    # Two local layers: the receptive field of position 9 is tokens 5..9.
    local2 = make(**VARIANTS['sliding_all_local'])
    base2 = apply(local2, tokens, mask)
    for far in (0, 4):
        np.testing.assert_array_equal(
            apply(local2, _flip(tokens, far), mask)[:, last], base2[:, last])
    assert np.abs(apply(local2, _flip(tokens, 5), mask)[:, last] - base2[:, last]).max() > 1e-4
    # Local then global (period 2): the global layer sees everything again.
    mixed = make(**VARIANTS['sliding_period2'])
    base3 = apply(mixed, tokens, mask)
    assert np.abs(apply(mixed, _flip(tokens, 0), mask)[:, last] - base3[:, last]).max() > 1e-4


def test_final_logit_softcap_bounds_logits():
    capped = make(**VARIANTS['final_softcap'])
    raw = make()
    nnx.update(raw, nnx.state(capped))
    tokens, mask = inputs()
    got, uncapped = apply(capped, tokens, mask), apply(raw, tokens, mask)
    cap = capped.cfg.final_logit_softcap
    assert np.abs(uncapped).max() > 1.5 * cap  # the cap is active
    assert np.abs(got).max() <= cap
    np.testing.assert_allclose(got, cap * np.tanh(uncapped / cap), rtol=1e-5, atol=1e-5)


def test_attention_softcap_bounds_attention_logits():
    """Capped at 1e-3, attention logits stay within +-1e-3 however large q.k is, so the model
    equals one with uniform attention over the visible keys (reference: query_scale 0, no cap)."""
    model = make(attn_logit_softcap=1e-3, query_scale=100.0)
    tokens, mask = inputs()
    p = np_params(model)
    _, uniform = ref_decoder(TINY.replace(query_scale=0.0), p, tokens, mask)
    _, sharp = ref_decoder(TINY.replace(query_scale=100.0), p, tokens, mask)
    got = apply(model, tokens, mask)
    sel = mask.astype(bool)
    assert np.abs(sharp[sel] - uniform[sel]).max() > 0.5  # uncapped, attention is far from uniform
    # Weights within a factor e^(+-2e-3) of uniform move outputs by ~0.2% of their scale.
    np.testing.assert_allclose(got[sel], uniform[sel], atol=2e-2)


def test_bfloat16_runs_and_stays_close_to_float32():
    f32 = make()
    bf16 = make(param_dtype='bfloat16', dtype='bfloat16')
    state, src = nnx.state(bf16, nnx.Param), nnx.state(f32, nnx.Param)
    src_vars = dict(src.flat_state())
    for path, var in state.flat_state():
        var.value = src_vars[path][...].astype(jnp.bfloat16)
        src_vars[path].value = var[...].astype(jnp.float32)  # both models hold the same numbers
    nnx.update(bf16, state)
    nnx.update(f32, src)
    assert all(v[...].dtype == jnp.bfloat16 for _, v in nnx.state(bf16).flat_state())
    tokens, mask = inputs()
    lo, hi = apply(bf16, tokens, mask), apply(f32, tokens, mask)
    assert lo.dtype == np.float32 and np.isfinite(lo).all()
    sel = mask.astype(bool)
    # bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.4%) and its rounding errors
    # compound over 2 layers: logits agree to ~1% of their range (measured 0.8%), next-token
    # distributions to a small KL (measured max 8e-5 nats) and nearly always on the argmax.
    scale = np.abs(hi[sel]).max()
    assert np.abs(lo[sel] - hi[sel]).max() < 0.02 * scale
    lp_lo, lp_hi = jax.nn.log_softmax(lo[sel]), jax.nn.log_softmax(hi[sel])
    kl = np.sum(np.exp(lp_hi) * (lp_hi - lp_lo), axis=-1)
    assert kl.max() < 1e-3
    assert (lo[sel].argmax(-1) == hi[sel].argmax(-1)).mean() >= 0.9


def test_remat_gives_identical_loss_and_gradients():
    plain = make(num_layers=1)  # one block: all that remat wraps, and less to compile
    remat = make(num_layers=1, remat=True)
    nnx.update(remat, nnx.state(plain))
    tokens, mask = inputs()
    # The switch is real: the remat model's backward pass holds checkpointed blocks.
    jaxprs = [
        str(
            jax.make_jaxpr(_loss_and_grad.__wrapped__,
                           static_argnums=0)(*nnx.split(m), tokens, mask)) for m in (plain, remat)
    ]
    assert 'remat' not in jaxprs[0] and 'remat' in jaxprs[1]
    (l0, g0), (l1, g1) = [_loss_and_grad(*nnx.split(m), tokens, mask) for m in (plain, remat)]
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    assert float(l0) > 0
    flat0, flat1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
    assert len(flat0) == len(flat1) and any(np.abs(np.asarray(g)).max() > 0 for g in flat0)
    for a, b in zip(flat0, flat1):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_cached_decoding_in_chunks_equals_one_uncached_pass():
    """Prefill and decode chunks through the KV cache reproduce the uncached logits, on a model
    with every switch on (local and global layers, GQA, soft-caps, qk-norm, post-norms)."""
    model = make(**VARIANTS['gemma_like'])
    cfg = model.cfg
    rng = np.random.RandomState(4)
    s = 16
    tokens = rng.randint(3, cfg.vocab_size, (3, s)).astype(np.int32)
    mask = np.ones((3, s), np.int32)
    mask[1, :3] = 0  # left-padded prompts; everything after the prompt is real
    mask[2, :5] = 0
    tokens = tokens * mask
    full = apply(model, tokens, mask)
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, chunk, positions, kv_mask, cache, index):
        return nnx.merge(graphdef, state)(chunk, positions=positions, kv_mask=kv_mask, cache=cache,
                                          cache_index=index)

    positions = np.asarray(positions_from_mask(jnp.asarray(mask)))
    cache = init_cache(cfg, 3, s)
    chunks = []
    bounds = [0, 4, 5, 9, 10, 14, 15, s]  # chunks of 4 and 1 tokens (two compiled shapes)
    for start, end in zip(bounds[:-1], bounds[1:]):
        kv_mask = mask * (np.arange(s) < end)
        logits, cache = step(state, tokens[:, start:end], positions[:, start:end], kv_mask, cache,
                             start)
        chunks.append(np.asarray(logits))
    assert_real_close(np.concatenate(chunks, axis=1), full, mask)


# ----------------------------------------------------------------------------- heads


def _padded_batch():
    """Right-padded sequences (one also left-padded) with garbage in the padding."""
    rng = np.random.RandomState(5)
    tokens = rng.randint(3, TINY.vocab_size, (3, 10)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[0, 7:] = 0
    mask[1, :2] = 0
    mask[1, 8:] = 0
    return tokens, mask


def test_reward_model_reads_the_last_real_token():
    rm = make(RewardModel)
    rm_heads = RewardModel(TINY, rngs=nnx.Rngs(0), num_heads=3)
    perturb(rm_heads)
    tokens, mask = _padded_batch()
    rewards = apply(rm_heads, tokens, mask)
    assert rewards.shape == (3, 3)
    h, _ = ref_decoder(TINY, np_params(rm_heads, ('backbone',)), tokens, mask)
    last = np.array([np.nonzero(m)[0].max() for m in mask])
    head = np_params(rm_heads)
    want = h[np.arange(3), last] @ head[('reward_head',)] + head[('reward_bias',)]
    np.testing.assert_allclose(rewards, want, rtol=1e-5, atol=1e-5)
    # Tokens beyond the last real one are ignored; the last real token is not.
    after = np.arange(tokens.shape[1])[None, :] > last[:, None]
    assert after[0].any() and after[1].any()
    garbage = np.where(after, (tokens + 11) % TINY.vocab_size, tokens)
    np.testing.assert_allclose(apply(rm_heads, garbage, mask), rewards, rtol=1e-6, atol=1e-6)
    changed = tokens.copy()
    changed[np.arange(3), last] = (changed[np.arange(3), last] + 1) % TINY.vocab_size
    assert np.all(np.abs(apply(rm_heads, changed, mask) - rewards).max(-1) > 1e-5)
    graphdef, state = nnx.split(rm)
    shape = jax.eval_shape(lambda s: nnx.merge(graphdef, s)(tokens, mask), state).shape
    assert shape == (3, 1)  # one head by default (traced only: nothing compiled)


def test_value_model_gives_a_value_per_token():
    vm = make(ValueModel)
    tokens, mask = _padded_batch()
    values = apply(vm, tokens, mask)
    assert values.shape == (3, 10) and values.dtype == np.float32
    h, _ = ref_decoder(TINY, np_params(vm, ('backbone',)), tokens, mask)
    head = np_params(vm)
    want = (h @ head[('value_head',)])[..., 0] + head[('value_bias',)][0]
    assert_real_close(values, want, mask)
    # Freshly made critics start at exactly zero.
    assert not np.any(apply(ValueModel(TINY, rngs=nnx.Rngs(0)), tokens, mask))


def test_preference_model_is_antisymmetric():
    pm = make(PreferenceModel)
    tokens, mask = _padded_batch()
    other = np.roll(tokens, 1, axis=0)
    other_mask = np.roll(mask, 1, axis=0)
    ab = apply(pm, tokens, mask, other, other_mask)
    ba = apply(pm, other, other_mask, tokens, mask)
    aa = apply(pm, tokens, mask, tokens, mask)
    assert ab.shape == (3,)
    np.testing.assert_array_equal(ab, -ba)
    np.testing.assert_array_equal(np.asarray(jax.nn.sigmoid(aa)), 0.5)
    assert np.abs(ab).min() > 1e-4  # a != b: a real preference
    # Against the reference: g(a, b) = w . silu(A e_a + B e_b + c), logit = g(a, b) - g(b, a).
    p = np_params(pm)
    embed = lambda t, m: (lambda h: h[np.arange(3), [np.nonzero(r)[0].max() for r in m]])(
        ref_decoder(TINY, np_params(pm, ('backbone',)), t, m)[0])
    ea, eb = embed(tokens, mask), embed(other, other_mask)
    g = lambda x, y: ref_silu(x @ p[('pair_first',)] + y @ p[('pair_second',)] + p[
        ('pair_bias',)]) @ p[('pair_out',)]
    np.testing.assert_allclose(ab, g(ea, eb) - g(eb, ea), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize('name,published', [('llama3_8b', 8.03e9), ('qwen2_5_7b', 7.62e9),
                                            ('gemma2_2b', 2.61e9)])
def test_preset_parameter_counts(name, published):
    cfg = PRESETS[name]
    assert abs(cfg.num_params() - published) / published < 5e-3
    before = {id(x) for x in jax.live_arrays()}
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract))
    assert [x.shape for x in jax.live_arrays() if id(x) not in before] == []  # no allocation
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert sum(math.prod(x.shape) for x in leaves) == cfg.num_params()
    assert {x.dtype for x in leaves} == {jnp.dtype(cfg.param_dtype)}
