"""Mixed precision for the optimizer: a float32 master copy of low-precision parameters, so that
bfloat16 weights train at the small learning rates of preference fine-tuning."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class MasterState(NamedTuple):
    """Optimizer state of `float32_master`: the float32 master parameters and the inner state."""

    master: Any
    inner: Any


def _is_low_precision(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32


def to_float32(x):
    """`x` in float32 when it is stored below it (else unchanged)."""
    return x.astype(jnp.float32) if _is_low_precision(x) else x


def needs_master(params) -> bool:
    """Whether any trainable parameter is stored below float32 (bfloat16, float16)."""
    return any(_is_low_precision(x) for x in jax.tree.leaves(params))


def float32_master(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Runs `inner` on a float32 master copy of low-precision parameters.

    At the learning rates of DPO and RL (1e-7 to 1e-5) an AdamW step is below bfloat16's
    resolution (8 bits of mantissa: a relative step under 2^-9 rounds to nothing), so updating
    bfloat16 parameters in place trains nothing. Here the optimizer state holds the parameters in
    float32 (`MasterState.master`), `inner` updates that copy, and the update returned moves each
    stored parameter exactly onto its master rounded to the stored dtype: the stored weights
    are a rounding of the master, never the result of a rounded update. Costs 4 bytes a
    parameter; a model with any low-precision parameter gets every parameter mirrored (the models
    here store one dtype throughout).
    """
    def init(params):
        master = jax.tree.map(to_float32, params)
        return MasterState(master, inner.init(master))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError('float32_master needs the parameters in update()')
        updates, inner_state = inner.update(jax.tree.map(to_float32, grads), state.inner,
                                            state.master)
        master = optax.apply_updates(state.master, updates)
        # The stored parameter p becomes round(master): p + (round(master) - p) in float32 is
        # exact (both are low-precision values), and apply_updates casts back to p's dtype.
        out = jax.tree.map(lambda m, p: m.astype(p.dtype).astype(m.dtype) - p.astype(m.dtype),
                           master, params)
        return out, MasterState(master, inner_state)

    return optax.GradientTransformation(init, update)
