"""Low-rank adapters (LoRA; Hu et al. 2021) on the decoder's projections, over a frozen base.

An adapted projection computes y = x W + (alpha / r) (x A) B, with A [in, r] and B [r, out]
written in the projection's own einsum layout (A [d, r] and B [r, heads, head_dim] for q/k/v,
A [heads, head_dim, r] and B [r, d] for o, A [d, r] and B [r, f] for gate and up, A [f, r] and
B [r, d] for down), so no weight is reshaped or merged at run time and the same code serves the
training step, the scorer and the KV-cache sampler. B starts at zero: the adapted model starts
equal to its base, exactly (x W + 0). A starts as PEFT's does (Kaiming-uniform with a = sqrt(5),
i.e. U(-1/sqrt(in), 1/sqrt(in))).

The adapters are `LoRAParam`s, a Variable type apart from `nnx.Param`: `nnx.state(m, nnx.Param)`
is the base alone (what starting points and Hugging Face checkpoints load and save), and
`TRAINABLE` selects the adapters and, for reward, value and preference models, their
small heads (which start fresh and so must train, as PEFT's `modules_to_save`). With stacked
layers the adapters are stacked too ([L, ...]), scanned beside the weights they adapt.

Adapter dropout (PEFT's lora_dropout) is inverted dropout on the adapter's input x before A, in
the training update only: the loop gives each adapter of the model it differentiates a key
(`with_dropout`); a model without keys (the sampler, the scorer, evaluation, the reference) runs
the adapters deterministically. One mask per update microbatch, adapter and layer: calls of the
same shape within one loss (a DPO loss's chosen and rejected when scored apart) share it.

`transformer.base_model(model)` is the model with its adapters switched off: a model of the same
class without adapters whose arrays *are* the adapted model's base arrays (no copy), used as the
frozen reference of DPO, Nash and PPO.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
from flax import nnx

# The heads of the reward, value and preference models: trained whole beside the adapters.
HEADS = ('reward_head', 'reward_bias', 'value_head', 'value_bias', 'pair_first', 'pair_second',
         'pair_bias', 'pair_out')


class LoRAParam(nnx.Variable):
    """An adapter weight (A or B of one projection)."""


class DropoutKey(nnx.Variable):
    """An adapter's dropout key data for one update ([L, 2] when stacked), set by `with_dropout`
    on a model merged inside the update and never stored."""


class Adapter(nnx.Module):
    """A [*in, r] and B [r, *out] of one projection, applied as scale * (x A) B.

    `in_eq` and `out_eq` are the two einsums ('btd,dr->btr' and 'btr,rhk->bthk' for q), so each
    projection keeps its own layout.
    """
    def __init__(self, in_shape, in_axes, out_shape, out_axes, *, rank: int, alpha: float,
                 in_eq: str, out_eq: str, name: str, rngs: nnx.Rngs, dropout: float = 0.0):
        bound = 1.0 / math.sqrt(math.prod(in_shape))
        a = jax.random.uniform(_key(rngs, name), (*in_shape, rank), jnp.float32, -bound, bound)
        self.a = LoRAParam(a, axes=(*in_axes, None))
        self.b = LoRAParam(jnp.zeros((rank, *out_shape), jnp.float32), axes=(None, *out_axes))
        self.scale = float(alpha) / rank
        self.in_eq, self.out_eq = in_eq, out_eq
        self.inputs = len(in_shape)  # A's input axes: W = [*in, *out] in every projection
        self.dropout = float(dropout)
        self.dropout_key = nnx.data(None)  # a DropoutKey inside an update (`with_dropout`)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = x.dtype
        if self.dropout_key is not None:
            keep = jax.random.bernoulli(jax.random.wrap_key_data(self.dropout_key[...]),
                                        1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / jnp.asarray(1.0 - self.dropout, dt), jnp.zeros((), dt))
        xa = jnp.einsum(self.in_eq, x, self.a[...].astype(dt))
        return jnp.einsum(self.out_eq, xa, self.b[...].astype(dt)) * jnp.asarray(self.scale, dt)


def _key(rngs: nnx.Rngs, name: str) -> jax.Array:
    """A key for an adapter that leaves `rngs` where it was: the base's initialisation is the same
    with adapters as without (a from-scratch base does not depend on the adapter config)."""
    stream = rngs.params
    key = jax.random.fold_in(stream.key[...], stream.count[...])
    return jax.random.fold_in(jax.random.fold_in(key, 0x10BA), zlib.crc32(name.encode()))


def adapter_for(cfg, target: str, in_shape, in_axes, out_shape, out_axes, in_eq: str, out_eq: str,
                rngs: nnx.Rngs) -> Adapter | None:
    """The adapter of projection `target` when `cfg` adapts it, else None."""
    if not cfg.lora_rank or target not in cfg.lora_targets:
        return None
    return Adapter(in_shape, in_axes, out_shape, out_axes, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                   in_eq=in_eq, out_eq=out_eq, name=target, rngs=rngs,
                   dropout=0.0 if target == 'lm_head' else cfg.lora_dropout)


def with_dropout(model: nnx.Module, rng: jax.Array) -> nnx.Module:
    """`model` with a dropout key on each of its adapters that has a dropout rate (in place;
    returned for chaining): a key per adapter (folded from its path) and per layer (split along
    a stacked layers axis). A model without such adapters is returned untouched."""
    for path, m in model.iter_modules():
        if isinstance(m, Adapter) and m.dropout > 0:
            key = jax.random.fold_in(jax.random.fold_in(rng, 0xD50),
                                     zlib.crc32('/'.join(map(str, path)).encode()))
            lead = m.a.shape[:m.a.ndim - m.inputs - 1]  # a stacked layers axis, or none
            if lead:
                key = jax.random.split(key, lead)
            m.dropout_key = DropoutKey(jax.random.key_data(key))
    return model


def has_adapters(model: nnx.Module) -> bool:
    return bool(jax.tree.leaves(nnx.state(model, LoRAParam)))


# The filter of what trains in an adapted model: the adapters and the heads (`HEADS`).
TRAINABLE = nnx.Any(LoRAParam, *(nnx.PathContains(h) for h in HEADS))


def merged_params(model: nnx.Module) -> dict:
    """The base parameters with every adapter folded in (W + scale * A B), as a pure dict of the
    model without adapters: what a merged export writes."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for path, m in model.iter_modules():
        if isinstance(m, Adapter):
            *parent, name = path
            node = params
            for p in parent:
                node = node[p]
            if name == 'lm_head_lora':
                if 'lm_head' not in node:
                    raise ValueError('an adapter on a tied output head cannot be merged: the '
                                     'merged head would differ from the input embedding')
                node['lm_head'] = node['lm_head'] + delta(m).astype(node['lm_head'].dtype)
                continue
            weight = name.removesuffix('_lora') + '_proj'
            if f'{weight}_scale' in node:
                raise ValueError('merging adapters into an int8 base would round them away: '
                                 'merge into its full-precision starting point instead')
            node[weight] = node[weight] + delta(m).astype(node[weight].dtype)
    return params


def delta(m: Adapter) -> jax.Array:
    """scale * A B in the weight's layout [*in, *out] ([L, ...] when stacked)."""
    a, b = m.a[...].astype(jnp.float32), m.b[...].astype(jnp.float32)
    lead = a.shape[:a.ndim - m.inputs - 1]  # a stacked layers axis, or none
    ins, outs = a.shape[len(lead):-1], b.shape[len(lead) + 1:]
    rank = a.shape[-1]
    ab = a.reshape(*lead, -1, rank) @ b.reshape(*lead, rank, -1)
    return ab.reshape(*lead, *ins, *outs) * m.scale
