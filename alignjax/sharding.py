"""The device mesh, logical-axis rules, and creation of state that is sharded from birth.

One mesh with axes ('data', 'fsdp', 'tensor'). Parameters carry logical axis names (`axes` on
each `nnx.Param`); a rules table maps each logical name to mesh axes. A dimension that does not
divide evenly over its mesh axes is replicated instead (a tiny model's 2 KV heads on a tensor axis
of 4, say), and the choice is logged once.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

# logical axis -> mesh axes (None: replicated). Overridable by config.mesh.rules.
# Parameters use the plain names; activations use batch, length and the act_* names, so that the
# embedding width of a weight (sharded over fsdp) and of an activation (replicated: its batch
# takes the fsdp axis) are set apart. The batch of every activation stays sharded over
# ('data', 'fsdp') from the embedding to the loss.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ('batch', BATCH_AXES),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('norm', None),
    ('layers', None),  # the leading axis of stacked (scanned) layers
    ('length', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv_heads', 'tensor'),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
    # The output head of the scoring passes runs vocabulary-parallel (`models/scoring.py`): its
    # rows gathered from the fsdp axis, its vocabulary split over the weight's own axes.
    ('act_head_rows', 'data'),
    ('act_head_vocab', ('fsdp', 'tensor')),
)

# The rules activations are constrained by (`constrain`); parameters get theirs explicitly.
_ACTIVATION_RULES: contextvars.ContextVar = contextvars.ContextVar('rules', default=None)

_warned: set = set()


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices=None) -> jax.sharding.Mesh:
    """A ('data', 'fsdp', 'tensor') mesh; one entry of `shape` may be -1 (all remaining devices).

    An explicit shape smaller than the device count uses the first devices (single host only).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f'mesh.shape must have 3 entries (data, fsdp, tensor), got {shape}')
    if shape.count(-1) > 1:
        raise ValueError(f'mesh.shape may contain at most one -1, got {shape}')
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f'mesh.shape {shape}: {len(devices)} devices do not divide by {known}')
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) > len(devices):
        raise ValueError(
            f'mesh.shape {shape} needs {math.prod(shape)} devices, have {len(devices)}')
    if math.prod(shape) < len(devices):
        if jax.process_count() > 1:
            raise ValueError(f'mesh.shape {shape} uses {math.prod(shape)} of {len(devices)} '
                             'devices; multi-host meshes must use every device')
        logging.warning('mesh.shape %s uses %d of %d devices', shape, math.prod(shape),
                        len(devices))
        devices = devices[:math.prod(shape)]
    return jax.make_mesh(tuple(shape), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


def rules_from_config(rules) -> tuple:
    """Normalises a rules table given as a list of [logical, mesh axis | list | None] pairs."""
    if rules is None:
        return DEFAULT_RULES
    out = []
    for entry in rules:
        name, target = entry
        if isinstance(target, list):
            target = tuple(target)
        out.append((name, target))
    return tuple(out)


@contextlib.contextmanager
def use_rules(rules):
    """Activations traced inside this context are constrained by `rules` (a config's
    `mesh.rules`, normalised by `rules_from_config`); outside it, by `DEFAULT_RULES`."""
    token = _ACTIVATION_RULES.set(rules_from_config(rules) if rules is not None else None)
    try:
        yield
    finally:
        _ACTIVATION_RULES.reset(token)


def current_rules() -> tuple:
    rules = _ACTIVATION_RULES.get()
    return DEFAULT_RULES if rules is None else rules


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` constrained to the sharding its logical `axes` get under the current mesh and rules
    (a no-op without a mesh: `jax.set_mesh`). A dimension that does not divide is replicated."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    spec = logical_to_spec(axes, x.shape, mesh, current_rules())
    return jax.lax.with_sharding_constraint(x, spec)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh, rules=DEFAULT_RULES):
    """PartitionSpec for a tensor with logical `axes`, replicating dimensions that do not divide."""
    table = dict(rules)
    spec, used = [], set()
    for name, size in zip(axes, shape):
        target = table.get(name) if name is not None else None
        if target is None:
            spec.append(None)
            continue
        mesh_axes = (target,) if isinstance(target, str) else tuple(target)
        mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape[a] > 1)
        n = math.prod(mesh.shape[a] for a in mesh_axes)
        if not mesh_axes or size % n:
            if mesh_axes and (name, size, n) not in _warned:
                _warned.add((name, size, n))
                logging.info('sharding: %s of size %d does not divide over %s (%d); replicated',
                             name, size, mesh_axes, n)
            spec.append(None)
            continue
        used.update(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return P(*spec)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh, rules=DEFAULT_RULES):
    """NamedShardings for an (abstract) nnx.State, from each variable's `axes` metadata."""
    def one(var):
        axes = var.get_metadata().get('axes')
        shape = var.shape if hasattr(var, 'shape') else var[...].shape
        if axes is None:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=_is_var)


def create_sharded(ctor: Callable[[], nnx.Module], mesh, rules=DEFAULT_RULES):
    """Builds `ctor()` with every parameter created directly on its sharding.

    Shapes are evaluated abstractly first; the jitted constructor then materialises each shard on
    its device, so no device ever holds an unsharded copy of the model.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(ctor))
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(lambda: nnx.state(ctor()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def shard_state(state, mesh, rules=DEFAULT_RULES):
    """Places an existing state onto its shardings (device_put per leaf, no host gather)."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


def spec_tree(module_or_state):
    """PartitionSpecs of every array in a module or state, for assertions and logs."""
    state = nnx.state(module_or_state) if isinstance(module_or_state,
                                                     nnx.Module) else module_or_state
    return jax.tree.map(lambda x: x.sharding.spec, state)


def batch_sharding(mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension over the mesh axes of the rules' `batch` entry (by default
    ('data', 'fsdp')), the rest replicated."""
    target = dict(current_rules()).get('batch', BATCH_AXES)
    return NamedSharding(mesh, P(target, *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch, mesh):
    """Process-local NumPy batch -> global jax.Arrays sharded over the batch axes.

    Each process passes its own rows (`data.pipeline` slices by process index); on one process this
    is a plain sharded device_put. Scalars are replicated. Entries that are already jax.Arrays
    (global arrays computed on device, e.g. reference log-probs) are placed as they are.

    On several processes, a mesh whose batch axes do not give each process its own block of rows
    (a tensor-parallel generation mesh spanning hosts: every device needs every row) first gathers
    the rows of all processes, so the global array holds each row once, in process order.
    """
    def one(x):
        if isinstance(x, jax.Array):  # already global (computed on device): place, no host trip
            return jax.device_put(x, batch_sharding(mesh, x.ndim) if x.ndim else replicated(mesh))
        x = np.asarray(x)
        if x.ndim == 0:
            return jax.device_put(x, replicated(mesh))
        sh = batch_sharding(mesh, x.ndim)
        n = jax.process_count()
        if n > 1 and not _rows_by_process(sh, (x.shape[0] * n, *x.shape[1:])):
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
            full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
            return jax.make_array_from_callback(full.shape, sh, lambda index: full[index])
        return jax.make_array_from_process_local_data(sh, x)

    return jax.tree.map(one, batch)


@functools.lru_cache(maxsize=64)
def _rows_by_process(sh: NamedSharding, global_shape: tuple[int, ...]) -> bool:
    """Whether the devices of each process p hold exactly rows [p * L, (p + 1) * L) of a
    `global_shape` array under `sh` (L = rows / processes): the layout of process-local batches."""
    n = jax.process_count()
    local = global_shape[0] // n
    rows = {}
    for device, index in sh.devices_indices_map(global_shape).items():
        start, stop, _ = index[0].indices(global_shape[0])
        rows.setdefault(device.process_index, set()).update(range(start, stop))
    return all(rows.get(p) == set(range(p * local, (p + 1) * local)) for p in range(n))


def process_batch_slice(global_batch_size: int) -> tuple[int, int]:
    """(start, size) of this process's rows in a global batch."""
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ValueError(f'batch size {global_batch_size} does not divide over {n} processes')
    local = global_batch_size // n
    return i * local, local


def to_local(x) -> np.ndarray:
    """A global batch-sharded jax.Array -> this process's rows as NumPy (the inverse of
    `shard_batch`). On one process this is a plain device_get."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    start, size = process_batch_slice(full.shape[0])
    return full[start:start + size]


def to_global_host(x) -> np.ndarray:
    """The whole of a global jax.Array as NumPy on every process (a collective when the array
    spans processes; a plain device_get otherwise)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def process_sum(values):
    """Element-wise sum of a host value (scalar or array) over processes. A collective: every
    process calls it at the same point; on one process it returns `values` unchanged."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(np.asarray(values))).sum(axis=0)


def process_mean(values):
    """Element-wise mean over processes (equal-sized per-process parts: the global mean)."""
    if jax.process_count() == 1:
        return values
    return process_sum(values) / jax.process_count()
