"""Tests for alignjax.checkpoint: round trips onto shardings, retention, crash safety."""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from alignjax.checkpoint import Checkpointer, PreemptionGuard, abstract_like, layer_layout


def _mesh():
    return jax.make_mesh((len(jax.devices()),), ('data',))


def _make_state(seed: int, sharding=None):
    """A trainer-like state: nested params, adamw opt_state (namedtuples), step, rng, algo."""
    params = {
        'embed': jnp.arange(8 * 4, dtype=jnp.float32).reshape(8, 4) + seed,
        'block': {
            'w': jnp.full((4, 4), 0.5 * seed, jnp.float32), 'b': jnp.arange(4, dtype=jnp.bfloat16)
        },
    }
    opt_state = optax.adamw(1e-3).init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = optax.adamw(1e-3).update(grads, opt_state, params)
    state = {
        'params': params,
        'opt_state': opt_state,
        'step': jnp.int32(seed),
        'rng': jax.random.key_data(jax.random.key(seed)),
        'algo': {'kl_coef': jnp.float32(0.1 * seed)},
    }
    if sharding is not None:
        state = jax.device_put(state, sharding)
    return state


def _target_shardings(state, mesh):
    """Shards every leaf with a leading dim of 8 over 'data', replicates the rest."""
    def pick(x):
        spec = P('data') if x.ndim and x.shape[0] == 8 and 8 % mesh.size == 0 else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(pick, state)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_round_trip_onto_target_shardings(tmp_path):
    mesh = _mesh()
    replicated = NamedSharding(mesh, P())
    state = _make_state(3, replicated)
    ckpt = Checkpointer(str(tmp_path / 'ckpt'), save_every=1, keep=2)
    assert ckpt.latest_step() is None
    assert ckpt.save(3, state, meta={'data_pos': 17, 'config_hash': 'abc'})
    ckpt.close()

    shardings = _target_shardings(state, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                            shardings)
    ckpt = Checkpointer(str(tmp_path / 'ckpt'), save_every=1, keep=2)
    restored, meta = ckpt.restore(None, abstract)
    ckpt.close()

    assert meta == {'data_pos': 17, 'config_hash': 'abc'}
    _assert_trees_equal(restored, state)
    adam_state = restored['opt_state'][0]
    assert type(adam_state) is type(state['opt_state'][0])
    assert adam_state._fields == ('count', 'mu', 'nu')
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
        assert leaf.sharding == want
    assert restored['params']['embed'].sharding.spec == P('data')


def test_interval_keep_last_k_and_latest(tmp_path):
    ckpt = Checkpointer(str(tmp_path), save_every=2, keep=2)
    saved = [ckpt.save(s, _make_state(s), meta={'pos': s}) for s in range(1, 8)]
    assert saved == [False, True, False, True, False, True, False]
    assert ckpt.all_steps() == [4, 6]
    assert ckpt.latest_step() == 6
    assert ckpt.save(7, _make_state(7), force=True)
    assert not ckpt.save(7, _make_state(7), force=True)  # never overwrites
    assert ckpt.all_steps() == [6, 7]
    assert sorted(os.listdir(tmp_path)) == ['6', '7']
    abstract = abstract_like(_make_state(0))
    state, meta = ckpt.restore(None, abstract)
    assert int(state['step']) == 7 and meta == {}
    state, meta = ckpt.restore(6, abstract)
    assert int(state['step']) == 6 and meta == {'pos': 6}
    _assert_trees_equal(state, _make_state(6))
    ckpt.close()


def test_async_save_then_restore(tmp_path):
    ckpt = Checkpointer(str(tmp_path), save_every=5, keep=1, async_save=True)
    assert ckpt.save(5, _make_state(5), meta={'pos': 5})
    ckpt.wait()
    assert ckpt.latest_step() == 5
    state, meta = ckpt.restore(None, abstract_like(_make_state(0)))
    _assert_trees_equal(state, _make_state(5))
    assert meta == {'pos': 5}
    ckpt.close()


def test_incomplete_directories_are_ignored(tmp_path):
    ckpt = Checkpointer(str(tmp_path), save_every=1, keep=5)
    ckpt.save(2, _make_state(2))
    ckpt.close()
    # What orbax leaves behind when killed mid-write, and a bare step directory.
    (tmp_path / '10.orbax-checkpoint-tmp' / 'state.orbax-checkpoint-tmp').mkdir(parents=True)
    (tmp_path / '12').mkdir()
    ckpt = Checkpointer(str(tmp_path), save_every=1, keep=5)
    assert ckpt.latest_step() == 2
    state, _ = ckpt.restore(None, abstract_like(_make_state(0)))
    assert int(state['step']) == 2
    ckpt.close()


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from orbax.checkpoint._src.path import atomicity
    from alignjax.checkpoint import Checkpointer

    mesh = jax.make_mesh((8,), ('data',))
    sharding = NamedSharding(mesh, P('data'))
    ckpt = Checkpointer(sys.argv[1], save_every=1, keep=3, async_save=True)
    ckpt.save(2, {'w': jax.device_put(jnp.full((8, 4), 2.0), sharding)}, meta={'pos': 2})
    ckpt.wait()

    async def die_before_step_rename(self, *args, **kwargs):
        if self.get_final().name.isdigit():  # items are written; the step is not committed
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, *args, **kwargs)

    original = atomicity.AtomicRenameTemporaryPath.finalize
    atomicity.AtomicRenameTemporaryPath.finalize = die_before_step_rename
    ckpt.save(4, {'w': jax.device_put(jnp.full((8, 4), 4.0), sharding)}, meta={'pos': 4})
    ckpt.wait()
    print('not killed')
""")


def test_sigkilled_save_is_not_latest(tmp_path):
    directory = tmp_path / 'ckpt'
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=8')
    proc = subprocess.run(
        [sys.executable, '-c', _KILLED_WRITER, str(directory)], env=env, capture_output=True,
        text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    names = sorted(os.listdir(directory))
    assert '2' in names and '4.orbax-checkpoint-tmp' in names, names
    assert '4' not in names

    mesh = _mesh()
    abstract = {'w': jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(mesh, P()))}
    ckpt = Checkpointer(str(directory), save_every=1, keep=3)
    assert ckpt.latest_step() == 2
    state, meta = ckpt.restore(None, abstract)  # written on 8 devices, read on this mesh
    np.testing.assert_array_equal(np.asarray(state['w']), np.full((8, 4), 2.0))
    assert state['w'].sharding == abstract['w'].sharding and meta == {'pos': 2}
    # Resuming writes step 4 again over the debris.
    assert ckpt.save(4, {'w': jnp.full((8, 4), 4.0)}, meta={'pos': 4})
    assert ckpt.latest_step() == 4
    ckpt.close()
    assert '4.orbax-checkpoint-tmp' not in os.listdir(directory)


_TWO_PROCESS_WORKER = textwrap.dedent("""
    import os, signal, sys, time, traceback
    import jax
    from jax.experimental import multihost_utils
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from alignjax.checkpoint import Checkpointer, PreemptionGuard, abstract_like

    def main(process_id, directory, port):
        jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=process_id)
        mesh = jax.make_mesh((jax.device_count(),), ('data',))
        sharding = NamedSharding(mesh, P('data'))
        full = np.arange(32, dtype=np.float32).reshape(8, 4)
        state = {'w': jax.make_array_from_callback((8, 4), sharding, lambda idx: full[idx])}
        ckpt = Checkpointer(directory, save_every=100, keep=2, async_save=True)
        assert ckpt.latest_step() is None
        with PreemptionGuard() as guard:
            for step in range(1, 2000):  # steps of a run, each ending in a collective
                multihost_utils.sync_global_devices(f'step {step}')
                time.sleep(0.005)
                if step == 3 and process_id == 1:  # only one process is told to stop
                    os.kill(os.getpid(), signal.SIGTERM)
                if guard.should_stop(step):
                    break
            else:
                raise AssertionError('never stopped')
        print('stopped at', step, flush=True)
        assert ckpt.save(step, state, meta={'pos': step}, force=True)
        ckpt.wait()
        assert ckpt.latest_step() == step
        restored, meta = ckpt.restore(None, abstract_like(state))
        assert meta == {'pos': step} and restored['w'].sharding == sharding
        for shard in restored['w'].addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
        ckpt.close()

    try:
        main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)  # skip the distributed shutdown barrier so the test fails fast
    print('ok', sys.argv[1], flush=True)
""")


def test_two_processes_agree_on_stop_save_and_restore(tmp_path):
    with socket.socket() as sock:
        sock.bind(('localhost', 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=2')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    logs = [open(tmp_path / f'process{i}.log', 'w+') for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', _TWO_PROCESS_WORKER,
             str(i),
             str(tmp_path / 'ckpt'),
             str(port)], env=env, cwd=repo, stdout=logs[i], stderr=subprocess.STDOUT)
        for i in range(2)
    ]
    deadline = time.monotonic() + 90
    # A failing process leaves its peer blocked in a collective: stop waiting then.
    while (any(p.poll() is None for p in procs) and time.monotonic() < deadline
           and not any(p.poll() for p in procs)):
        time.sleep(0.1)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    stops = []
    for i, (proc, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        out = log.read()
        log.close()
        assert proc.returncode == 0 and f'ok {i}' in out, out[-3000:]
        stops.append(re.search(r'stopped at (\d+)', out).group(1))
    # Both at the step the coordination service named, after the signal, and saved there.
    assert stops[0] == stops[1] and int(stops[0]) > 3, stops
    assert sorted(os.listdir(tmp_path / 'ckpt')) == [stops[0]]


@pytest.mark.parametrize('sigint', [False, True])
def test_preemption_guard_sets_flag_and_restores_handler(sigint):
    previous_term = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)
    with PreemptionGuard(sigint=sigint) as guard:
        assert not guard.requested and not guard.should_stop(0)
        sig = signal.SIGINT if sigint else signal.SIGTERM
        os.kill(os.getpid(), sig)
        assert guard.requested and guard.should_stop(1)
        assert guard.signum == sig
    assert signal.getsignal(signal.SIGTERM) is previous_term
    assert signal.getsignal(signal.SIGINT) is previous_int


def test_restore_without_checkpoint_raises(tmp_path):
    ckpt = Checkpointer(str(tmp_path), save_every=1, keep=1)
    with pytest.raises(FileNotFoundError):
        ckpt.restore(None, abstract_like(_make_state(0)))
    ckpt.close()


@pytest.mark.parametrize('saved_scan', [False, True])
def test_other_layer_layout_is_refused_in_one_line(tmp_path, saved_scan):
    """A checkpoint written with the layers one by one (before they were stacked, or with
    model.scan_layers=False) restored into stacked layers, or the other way: one line naming
    the directory, the two layouts and the flag that restores it."""
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from alignjax.models import PRESETS, Decoder  # pylint: disable=g-import-not-at-top
    state = lambda scan: {
        'params': nnx.state(
            Decoder(PRESETS['tiny'].replace(num_layers=2, scan_layers=scan), rngs=nnx.Rngs(0)))
    }
    ckpt = Checkpointer(str(tmp_path), save_every=1, keep=1)
    ckpt.save(1, state(saved_scan))
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path), save_every=1, keep=1)
    target = abstract_like(state(not saved_scan))
    with pytest.raises(ValueError, match=f'set config.model.scan_layers={saved_scan}') as e:
        ckpt.restore(None, target)
    assert '\n' not in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(ValueError, match=f'scan_layers={saved_scan}'):
        ckpt.restore_params(None, target['params'])
    # The same layout restores.
    restored, _ = ckpt.restore(None, abstract_like(state(saved_scan)))
    ckpt.close()
    assert layer_layout(restored) == ('stacked' if saved_scan else 'one by one')
