"""Generation and training in different shardings of the same weights.

An update wants FSDP (parameters and optimizer state split over many devices, gathered layer by
layer); a sampler wants each decode step's weights close at hand: tensor-parallel, or whole
copies replicated over a data axis, so that each device decodes its own rows with no gather per
token (the idea behind ReaLHF's parameter reallocation). `GenerationSharding` is the sampler's
mesh over the same devices as the training mesh, reshaped, with its own logical rules; `reshard`
moves a model onto it with one `jax.device_put` per parameter to its `NamedSharding` (shards go
device to device; nothing is funnelled through the host or one device), and times it. The rollout
keeps the moved policy for one step and the moved reference for the run: the price of a second
sharding is one extra copy of each.

`config.rl.generation_sharding` names the choice:
- 'train': sample in the training sharding (no reshard);
- 'replicated': mesh (-1, 1, 1): every parameter replicated, prompts split over 'data';
- 'tensor': mesh (1, 1, -1): heads, MLP and vocabulary split over 'tensor';
- 'D,F,T': any (data, fsdp, tensor) shape over the same devices, one entry may be -1.
"""

from __future__ import annotations

import dataclasses
import time

import jax
from flax import nnx

from alignjax import sharding

PRESETS = {'replicated': (-1, 1, 1), 'tensor': (1, 1, -1)}


def parse_shape(spec: str) -> tuple[int, int, int] | None:
    """The generation mesh shape named by `spec`, or None for 'train' (or '')."""
    if spec in ('', 'train'):
        return None
    if spec in PRESETS:
        return PRESETS[spec]
    try:
        shape = tuple(int(x) for x in spec.split(','))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise ValueError(f"generation sharding {spec!r}: expected 'train', "
                         f"{' or '.join(repr(k) for k in PRESETS)}, or a mesh shape 'D,F,T'")
    return shape


@dataclasses.dataclass(frozen=True)
class GenerationSharding:
    """The sampler's mesh (the training mesh's devices, reshaped) and its logical rules."""

    mesh: jax.sharding.Mesh
    rules: tuple = sharding.DEFAULT_RULES

    @classmethod
    def from_spec(cls, spec: str, train_mesh, rules=sharding.DEFAULT_RULES):
        """None for 'train'; otherwise the generation mesh over `train_mesh`'s devices."""
        shape = parse_shape(spec)
        if shape is None:
            return None
        devices = list(train_mesh.devices.flat)
        return cls(sharding.make_mesh(shape, devices=devices), rules)

    def reshard(self, module: nnx.Module) -> tuple[nnx.Module, float]:
        """(a copy of `module` on the generation shardings, seconds the move took).

        The copy shares nothing with `module` that a later donation could invalidate while the
        sampler runs: it is used for one rollout and dropped.
        """
        graphdef, state = nnx.split(module)
        jax.block_until_ready(state)  # time the move, not the update still running
        start = time.perf_counter()
        state = sharding.shard_state(state, self.mesh, self.rules)
        jax.block_until_ready(state)
        return nnx.merge(graphdef, state), time.perf_counter() - start

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mesh.devices.shape)
