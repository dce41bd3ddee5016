"""Layers under one `lax.scan` (`model.scan_layers`) against the Python loop over blocks."""

import jax
import numpy as np
import pytest
from flax import nnx

from alignjax.models.transformer import stack_layers
from test_models import _loss_and_grad, inputs, make


def _same_loss_and_grads(unrolled, scanned, tokens, mask) -> float:
    """Loads the unrolled model's weights into the scanned one, checks that both give the same
    loss and gradients, and returns the loss."""
    nnx.update(scanned, stack_layers(nnx.state(unrolled)))
    (l0, g0), (l1, g1) = [_loss_and_grad(*nnx.split(m), tokens, mask) for m in (unrolled, scanned)]
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(stack_layers(g0)), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    return float(l0)


@pytest.mark.parametrize('policy', ['full', 'save_dots'])
def test_scanned_layers_equal_unrolled_layers(policy):
    """One `lax.scan` over the blocks computes what the Python loop does, on Gemma-style layers
    whose local/global flag and RoPE base change from layer to layer (carried as data), in the
    loss, its gradients, and with remat; and the program does not grow with depth."""
    over = dict(num_layers=4, sliding_window=3, local_layer_period=2, rope_local_theta=100.0,
                attn_logit_softcap=20.0, remat=True, remat_policy=policy,
                scan_unroll=1)  # the scan's loop itself; scan_unroll has its own test below
    unrolled = make(scan_layers=False, **over)
    scanned = make(scan_layers=True, **over)
    tokens, mask = inputs()
    l0 = _same_loss_and_grads(unrolled, scanned, tokens, mask)
    # The window is real here (a global-only model differs), so the per-layer flags were used.
    plain = make(scan_layers=True, **{**over, 'sliding_window': None})
    nnx.update(plain, stack_layers(nnx.state(unrolled)))
    assert abs(float(_loss_and_grad(*nnx.split(plain), tokens, mask)[0]) - l0) > 1e-4
    size = lambda m: len(
        str(
            jax.make_jaxpr(_loss_and_grad.__wrapped__, static_argnums=0)
            (*nnx.split(m), tokens, mask)))
    deep = make(scan_layers=True, **{**over, 'num_layers': 8})
    assert size(deep) < 1.2 * size(scanned)  # unrolled, 8 layers would be about twice 4


@pytest.mark.parametrize('scan', [True, False])
def test_rematerialised_frozen_model_runs_inside_the_gradient(scan):
    """A frozen reference merged outside `value_and_grad` and called inside it (the DPO update)
    with remat on: flax's nnx.remat raised TraceContextError here for the unrolled layers."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    policy = make(scan_layers=scan, remat=True)
    reference = make(scan_layers=scan, remat=True, perturb_seed=1)
    tokens, mask = inputs()
    graphdef, state = nnx.split(policy)

    @jax.jit
    def step(state, ref_state):
        ref = nnx.merge(*ref_state)
        return jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)
                                          (tokens, mask) - ref(tokens, mask)))(state)

    grads = step(state, nnx.split(reference))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('unroll', [0, 1, 3])
def test_scan_unroll_computes_the_same(unroll):
    """`model.scan_unroll`: 0 (all of a shallow model's layers an iteration), 1, or a k that does
    not divide the depth; the loss and gradients are the loop's."""
    from alignjax.models import config as model_config  # pylint: disable=g-import-not-at-top
    over = dict(num_layers=4, sliding_window=3, local_layer_period=2)
    unrolled = make(scan_layers=False, **over)
    scanned = make(scan_layers=True, scan_unroll=unroll, **over)
    assert scanned.cfg.layers_per_scan_step == (unroll or 4)
    assert make(scan_layers=True,
                num_layers=model_config.SHALLOW_LAYERS + 1).cfg.layers_per_scan_step == 1
    _same_loss_and_grads(unrolled, scanned, *inputs())
