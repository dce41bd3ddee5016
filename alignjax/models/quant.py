"""Weight-only int8 storage of a frozen base's projections (the QLoRA-style base of adapters).

A quantised projection stores W as int8 with one float32 scale per output channel,
W ~ q * s with s = max |W| over the input axes / 127 and q = round(W / s); the layer multiplies
by q * s in the compute dtype (XLA fuses the convert into the dot's operand). The q, k, v, o,
gate, up and down weights are quantised (the embedding, the output head and the norms are not):
at 7-8B they are about 85% of the parameters, so an int8 base takes a little over half of the
bfloat16 one. Quantisation happens after the base is loaded (`transformer.quantized_model`), so starting
points and checkpoints are always read in full precision; only frozen bases are quantised
(`config.lora.quantize`, which needs adapters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# Projection -> the number of its leading (input) axes, in alignjax's layouts.
INPUT_AXES = {
    'q_proj': 1, 'k_proj': 1, 'v_proj': 1, 'o_proj': 2, 'gate_proj': 1, 'up_proj': 1, 'down_proj': 1
}
QUANTIZATIONS = ('', 'int8')


def quantize(w: jax.Array, inputs: int, *, lead: int = 0) -> tuple[jax.Array, jax.Array]:
    """(int8 q, float32 scale) of a weight with `inputs` input axes after `lead` leading ones
    (a stacked layers axis); the scale has the leading and output axes."""
    axes = tuple(range(lead, lead + inputs))
    scale = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=axes) / 127.0
    scale = jnp.where(scale > 0, scale, 1.0)
    expand = jnp.expand_dims(scale, axes)
    q = jnp.clip(jnp.round(w.astype(jnp.float32) / expand), -127, 127).astype(jnp.int8)
    return q, scale


def store_int8(module: nnx.Module, names) -> None:
    """Replaces `module`'s projection Params `names` by their int8 values and a `<name>_scale`
    Param each, with the matching logical axes (from the full-precision draws: the same base)."""
    for name in names:
        p = getattr(module, name)
        inputs = INPUT_AXES[name]
        axes = tuple(p.get_metadata().get('axes') or (None,) * p[...].ndim)
        q, scale = quantize(p[...], inputs)
        setattr(module, name, nnx.Param(q, axes=axes))
        setattr(module, f'{name}_scale', nnx.Param(scale, axes=axes[inputs:]))


def weight(module: nnx.Module, name: str, dtype) -> jax.Array:
    """`module.<name>` in `dtype`, dequantised when the module's config quantises its base."""
    w = getattr(module, name)[...].astype(dtype)
    if not module.cfg.base_quant:
        return w
    return w * getattr(module, f'{name}_scale')[...].astype(dtype)


def quantize_values(decoder_values: dict, *, stacked: bool) -> None:
    """Replaces, in place, each projection weight of a Decoder's pure-dict state by its int8
    values and adds its `<name>_scale` (`stacked`: the blocks' arrays carry a layers axis)."""
    def walk(node):
        for key in list(node):
            if isinstance(node[key], dict):
                walk(node[key])
            elif key in INPUT_AXES:
                node[key], node[f'{key}_scale'] = quantize(node[key], INPUT_AXES[key],
                                                           lead=1 if stacked else 0)

    walk(decoder_values['layers'])
