"""Blockwise (flash) attention equals the dense reference in values and gradients; the reference
equals a NumPy loop; the blockwise backward's memory grows linearly with length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.models.attention import attention, reference_attention

TOL = dict(atol=1e-5, rtol=1e-5)


def _inputs(seed, *, b=2, t=40, s=None, h=4, kv=2, hd=8, q_scale=1.0):
    s = t if s is None else s
    r = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = q_scale * jax.random.normal(r[0], (b, t, h, hd), jnp.float32)
    k = jax.random.normal(r[1], (b, s, kv, hd), jnp.float32)
    v = jax.random.normal(r[2], (b, s, kv, hd), jnp.float32)
    w = jax.random.normal(r[3], (b, t, h, hd), jnp.float32)  # weights of the scalar loss
    return q, k, v, w


def _both(q, k, v, w, kw, *, block_q, block_k):
    """Outputs and d(sum(w * out))/d(q, k, v) of blockwise and reference, in one compile."""
    def run(impl, q, k, v, window):
        def loss(q, k, v):
            out = attention(q, k, v, impl=impl, block_q=block_q, block_k=block_k, window=window,
                            **kw)
            return jnp.sum(w * out), out

        (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    return run


def _check(q, k, v, w, kw, *, window=None, block_q=16, block_k=16, tol=TOL):
    run = _both(q, k, v, w, kw, block_q=block_q, block_k=block_k)
    if isinstance(window, jax.Array):  # a traced window: a jit argument, not a constant
        fn = jax.jit(lambda q, k, v, win:
                     (run('blockwise', q, k, v, win), run('xla', q, k, v, win)))
        (out_b, g_b), (out_r, g_r) = fn(q, k, v, window)
    else:
        fn = jax.jit(lambda q, k, v:
                     (run('blockwise', q, k, v, window), run('xla', q, k, v, window)))
        (out_b, g_b), (out_r, g_r) = fn(q, k, v)
    assert out_b.shape == q.shape and out_b.dtype == q.dtype
    np.testing.assert_allclose(out_b, out_r, **tol)
    for name, gb, gr in zip('qkv', g_b, g_r):
        assert np.isfinite(np.asarray(gb)).all(), name
        np.testing.assert_allclose(gb, gr, err_msg=f'd/d{name}', **tol)
    return out_r


def _kw(t, mask, scale=0.35, **extra):
    return dict(q_idx=jnp.arange(t, dtype=jnp.int32), kv_mask=mask, scale=scale, **extra)


def test_causal():
    q, k, v, w = _inputs(0, t=48)
    _check(q, k, v, w, _kw(48, jnp.ones((2, 48), bool)))


def test_left_padding_fully_masked_rows_are_uniform():
    q, k, v, w = _inputs(1)
    mask = jnp.ones((2, 40), bool).at[0, :7].set(False).at[1, :20].set(False)
    out = _check(q, k, v, w, _kw(40, mask))
    # Queries 0..6 of row 0 see no key: the mean of all 40 values of their kv head.
    mean_v = jnp.repeat(jnp.mean(v[0], axis=0), 2, axis=0)  # [H, hd], head h uses kv h // 2
    np.testing.assert_allclose(out[0, :7], jnp.broadcast_to(mean_v, (7, 4, 8)), **TOL)


def test_right_padding():
    q, k, v, w = _inputs(2)
    mask = jnp.ones((2, 40), bool).at[0, 25:].set(False).at[1, 33:].set(False)
    _check(q, k, v, w, _kw(40, mask))


def test_sliding_window_int():
    q, k, v, w = _inputs(3)
    mask = jnp.ones((2, 40), bool).at[1, :5].set(False)
    # Window 18 with blocks of 16: query 32, first of its block, sees key 15, last of block 0 (the
    # band's edge on a block edge, where an off-by-one in the skipped key blocks would show).
    out = _check(q, k, v, w, _kw(40, mask), window=18)
    full = reference_attention(q, k, v, **_kw(40, mask))
    assert np.abs(np.asarray(out - full)).max() > 1e-2  # the window changes the answer


def test_sliding_window_traced():
    q, k, v, w = _inputs(4)
    mask = jnp.ones((2, 40), bool).at[0, :3].set(False)
    _check(q, k, v, w, _kw(40, mask), window=jnp.int32(9))


def test_per_layer_window_under_scan():
    """A per-layer window scanned over layers (2**30 = global), as a decoder's lax.scan does."""
    q, k, v, _ = _inputs(5, t=24, kv=1)
    kw = _kw(24, jnp.ones((2, 24), bool))

    @jax.jit
    def layers(windows):
        step = lambda c, win: (
            c, attention(q, k, v, window=win, impl='blockwise', block_q=8, block_k=8, **kw))
        return jax.lax.scan(step, 0, windows)[1]

    local, global_ = layers(jnp.array([5, 2**30], jnp.int32))
    np.testing.assert_allclose(local, reference_attention(q, k, v, window=5, **kw), **TOL)
    np.testing.assert_allclose(global_, reference_attention(q, k, v, **kw), **TOL)


def test_softcap_with_scale():
    # Logits up to ~65, so the cap of 50 binds; softmaxes that sharp put the float32 gradients of
    # either implementation ~3e-5 from float64 (measured), hence the wider atol here.
    q, k, v, w = _inputs(6, q_scale=3.0)
    mask = jnp.ones((2, 40), bool).at[0, :4].set(False)
    out = _check(q, k, v, w, _kw(40, mask, scale=2.0, softcap=50.0), tol=dict(atol=5e-5, rtol=1e-5))
    uncapped = reference_attention(q, k, v, **_kw(40, mask, scale=2.0))
    assert np.abs(np.asarray(out - uncapped)).max() > 1e-2


@pytest.mark.parametrize('kv', [2, 1])
def test_grouped_query(kv):
    q, k, v, w = _inputs(7, h=4, kv=kv)
    mask = jnp.ones((2, 40), bool).at[1, :6].set(False)
    _check(q, k, v, w, _kw(40, mask))


def test_length_not_a_block_multiple():
    q, k, v, w = _inputs(8, t=37)
    mask = jnp.ones((2, 37), bool).at[0, :3].set(False).at[1, 30:].set(False)
    _check(q, k, v, w, _kw(37, mask), window=11, block_q=16, block_k=8)


@pytest.mark.parametrize('t', [6, 1])
def test_cached_layout(t):
    """S > T: the queries sit at cache_index + arange(T) in a cache of S slots."""
    s, offset = 45, 21
    q, k, v, w = _inputs(9, t=t, s=s)
    mask = jnp.zeros((2, s), bool).at[0, 4:offset + t].set(True).at[1, 0:offset + t].set(True)
    kw = dict(q_idx=offset + jnp.arange(t, dtype=jnp.int32), kv_mask=mask, scale=0.35)
    _check(q, k, v, w, kw, window=9, block_q=4, block_k=16)
    _check(q, k, v, w, kw, block_q=4, block_k=16)


def _numpy_attention(q, k, v, q_idx, kv_mask, scale, softcap, window):
    """Loops over batch, head and query: the rule as the docstring states it."""
    b, t, h, hd = q.shape
    s, kv = k.shape[1], k.shape[2]
    out = np.zeros((b, t, h, hd))
    for bi in range(b):
        for hi in range(h):
            kh = hi // (h // kv)
            for i in range(t):
                seen = [
                    j for j in range(s)
                    if j <= q_idx[i] and kv_mask[bi,
                                                 j] and (window is None or q_idx[i] - j < window)
                ]
                if not seen:
                    out[bi, i, hi] = v[bi, :, kh].mean(axis=0)
                    continue
                logits = np.array([scale * q[bi, i, hi] @ k[bi, j, kh] for j in seen])
                if softcap is not None:
                    logits = softcap * np.tanh(logits / softcap)
                p = np.exp(logits - logits.max())
                out[bi, i, hi] = (p / p.sum()) @ v[bi, seen, kh]
    return out


def test_reference_matches_numpy():
    q, k, v, _ = _inputs(10, b=2, t=5, s=9, h=4, kv=2, hd=3, q_scale=2.0)
    q_idx = np.arange(5) + 4
    mask = np.ones((2, 9), bool)
    mask[0, :6] = False  # row 0: queries at 4 and 5 see nothing, the others some of 6..8
    args = dict(scale=0.7, softcap=2.0, window=4)
    got = reference_attention(q, k, v, q_idx=jnp.asarray(q_idx), kv_mask=jnp.asarray(mask), **args)
    want = _numpy_attention(*map(np.asarray, (q, k, v)), q_idx, mask, **args)
    np.testing.assert_allclose(got, want, **TOL)


def test_auto_dispatch_and_unsupported_impls():
    q, k, v, _ = _inputs(11, t=16)
    kw = _kw(16, jnp.ones((2, 16), bool))
    loops = lambda threshold: 'while' in str(
        jax.make_jaxpr(lambda q: attention(q, k, v, threshold=threshold, **kw))(q))
    assert loops(16) and not loops(17)
    with pytest.raises(ValueError, match='softcap'):
        attention(q, k, v, impl='cudnn', softcap=30.0, **kw)
    with pytest.raises(ValueError, match='traced window'):
        jax.jit(lambda win: attention(q, k, v, impl='cudnn', window=win, **kw))(jnp.int32(4))
    with pytest.raises(ValueError, match='blockwise'):
        attention(q, k, v, impl='splash', **kw)
    with pytest.raises(ValueError, match='impl must be one of'):
        attention(q, k, v, impl='flash', **kw)


def _grad_temp_bytes(impl, t):
    """XLA's temp allocation of jit(grad) of attention at length t (compiled, never run)."""
    q = jax.ShapeDtypeStruct((1, t, 2, 32), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, t, 1, 32), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, t), jnp.bool_)

    def loss(q, k, v, mask):
        out = attention(q, k, v, q_idx=jnp.arange(t), kv_mask=mask, scale=0.18, impl=impl,
                        block_q=512, block_k=512)
        return jnp.sum(out * out)

    compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, kv, kv, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_gradient_memory_is_linear():
    lengths = (2048, 4096, 8192)
    blockwise = [_grad_temp_bytes('blockwise', t) for t in lengths]
    dense = [_grad_temp_bytes('xla', t) for t in lengths]
    for t, b, d in zip(lengths, blockwise, dense):
        print(f'T={t}: grad temp blockwise {b / 2 ** 20:.1f} MiB, dense {d / 2 ** 20:.1f} MiB')
    assert blockwise[1] / blockwise[0] < 2.6 and blockwise[2] / blockwise[1] < 2.6
    # The part that grows doubles with the length (a quadratic part would quadruple).
    assert (blockwise[2] - blockwise[1]) < 2.6 * (blockwise[1] - blockwise[0])
    # The dense reference is quadratic: the comparison could fail.
    assert dense[2] / dense[1] > 3.5 and dense[1] / dense[0] > 3.5
    assert blockwise[2] < dense[2] / 50
