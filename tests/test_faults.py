"""Faults lose nothing and runs reproduce themselves (issue 10).

* SIGKILL at ten moments of a tiny run (several inside checkpoint saves, proven by the save's
  unfinished directory left behind), resuming after each: the run ends on exactly the parameters
  and metrics of a run never killed.
* A NaN in a batch: config.nonfinite='stop' names the step and the metric and leaves the last good
  checkpoint bit for bit what a clean run saved; 'skip' drops that update and counts it.
* Same config and seed, same metrics bit for bit; another seed, other metrics.
"""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import checkpoint as ckpt_lib
from alignjax import experiment_lib
from alignjax import metrics as metrics_lib
from alignjax import workdir as workdir_lib
from alignjax.data import pipeline
from alignjax.data import records as records_lib
from alignjax.trainers import loop
from alignjax.trainers import sft

import experiment_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40
KILLS = 10
ENV = dict(
    os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1 '
    '--xla_backend_optimization_level=0', JAX_PLATFORMS='cpu')


def flags(data):
    # JSONL data: no gold evaluation at the end, so a launch is start-up plus training.
    return [
        f'--config={ROOT}/experiments/sft.py:tiny,steps={STEPS}',
        f'--config.data.train=jsonl:{data}', '--config.data.batch_size=8', '--config.ckpt_every=2',
        '--config.log_every=1', '--config.keep_ckpts=3'
    ]


def launch(workdir, data, n):
    log = open(os.path.join(workdir, f'launch-{n}.log'), 'w')  # a file: a pipe could fill up
    cmd = [sys.executable, '-m', 'alignjax.main', f'--workdir={workdir}/run', *flags(data)]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=log)


def finished_steps(run):
    """Finalized checkpoints, read from the directory listing: opening an orbax manager here
    would clean up the temporary directory of the save the run is making."""
    ckpts = os.path.join(run, 'checkpoints')
    names = os.listdir(ckpts) if os.path.isdir(ckpts) else []
    return sorted(
        int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(ckpts, n, 'state')))


def unfinished_saves(run):
    return set(glob.glob(os.path.join(run, 'checkpoints', '*orbax-checkpoint-tmp*')))


def trained(log):
    """Whether a launch logged a training step: by then its checkpoint manager exists and has
    removed the unfinished saves of earlier launches."""
    with open(log) as f:
        return '| loss ' in f.read()


def final_params(run):
    ckpt = ckpt_lib.Checkpointer(os.path.join(run, 'checkpoints'), save_every=1, keep=100)
    step = ckpt.latest_step()
    params = jax.tree.map(np.asarray, ckpt.restore_params(step))
    ckpt.close()
    return step, params


def curve(run):
    return [{k: v
             for k, v in m.items()
             if k not in metrics_lib.TIMING_KEYS}
            for m in metrics_lib.read_metrics(str(run))]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'sft.jsonl'
    records_lib.write_jsonl(path,
                            pipeline.load_records('synthetic:transitive', 'sft', num_examples=64))
    return str(path)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data):
    workdir = tmp_path_factory.mktemp('uninterrupted')
    proc = launch(workdir, data, 0)
    assert proc.wait(timeout=600) == 0, open(workdir / 'launch-0.log').read()[-3000:]
    return workdir / 'run'


def _wait(proc, until, timeout=300):
    deadline = time.time() + timeout
    while proc.poll() is None and not until() and time.time() < deadline:
        time.sleep(0.002)


def test_sigkill_at_random_moments_loses_nothing(reference, data, tmp_path):
    """Kills cycle through three kinds of moment: inside a save (as soon as orbax's temporary
    directory appears), a random time after the run has saved something new, and a random time
    after launch (imports, compilation, restore). After each kill the last complete checkpoint
    must be no older than before it; the final run must match the uninterrupted one exactly."""
    run = str(tmp_path / 'run')
    rng = random.Random(10)
    startup = None  # time to the first step of a launch, measured on the 'save' kills
    kinds, in_save, last = [], 0, []
    final = None
    while len(kinds) < KILLS:
        before = (finished_steps(run) or [0])[-1]
        stale = unfinished_saves(run)  # a killed save's leftovers, removed when the run restarts
        log = str(tmp_path / f'launch-{len(kinds) + 1}.log')
        launched = time.time()
        proc = launch(tmp_path, data, len(kinds) + 1)
        kind = ('save', 'after_progress', 'after_launch')[len(kinds) % 3]
        if kind == 'save':
            _wait(proc, lambda: trained(log))
            startup = time.time() - launched
            _wait(proc, lambda: bool(unfinished_saves(run)))
        elif kind == 'after_progress':
            _wait(proc, lambda: (finished_steps(run) or [0])[-1] > before)
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            time.sleep(rng.uniform(0.1, 1.0) * startup)  # imports, compilation, restore
        if proc.poll() is not None:
            final = proc  # it finished before this kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = unfinished_saves(run)
        hit_save = bool(left) if trained(log) else bool(left - stale)
        in_save += hit_save
        kinds.append(kind + (' (in a save)' if hit_save else ''))
        last.append((finished_steps(run) or [0])[-1])
        assert last[-1] >= before, f'kill {len(kinds)} ({kind}) lost checkpoint {before}'
    resumed = sum(
        'Resumed from' in open(log).read() for log in glob.glob(str(tmp_path / 'launch-*.log')))
    print(f'{len(kinds)} kills, {in_save} inside a save: {kinds}; last complete checkpoint '
          f'after each: {last}; {resumed} launches resumed before the final one')
    assert len(kinds) >= 10 and in_save >= 3, (kinds, last)
    final = final or launch(tmp_path, data, len(kinds) + 1)
    assert final.wait(timeout=600) == 0
    step_a, params_a = final_params(reference)
    step_b, params_b = final_params(run)
    assert step_a == step_b == STEPS
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    assert len(curve(reference)) == STEPS
    assert curve(run) == curve(reference)


# --- the non-finite guard -----------------------------------------------------------------------


def tiny_config(**overrides):
    c = experiment_lib.load_config(os.path.join(ROOT, 'experiments', 'sft.py') + ':tiny,steps=6')
    c.log_every = 1
    c.ckpt_every = 1
    c.keep_ckpts = 10
    c.data.num_examples = 64
    c.mesh.shape = (1, 1, 1)
    return experiment_runs.override(c, **overrides)


def with_nan_at(step_index):
    """SFT whose batch at `step_index` carries a NaN (a float field summed into the loss)."""
    def build(config, mesh):
        algo = sft.build(config, mesh)
        algo.evaluators = []
        batches, loss_fn = algo.batches, algo.loss_fn

        def poisoned(step, model, algo_state):
            batch, host_metrics = batches(step, model, algo_state)
            batch = dict(batch)  # the stream's own dict stays as it was
            batch['noise'] = np.full(len(batch['prompt']), np.nan if step == step_index else 0.0,
                                     np.float32)
            return batch, host_metrics

        def loss(model, frozen, batch, rng):
            loss_sum, count, metrics = loss_fn(model, frozen, batch, rng)
            # NaN * loss: the NaN reaches the gradient too; 0 * loss leaves the clean run's bits.
            return loss_sum + jnp.sum(batch['noise']) * loss_sum, count, metrics

        algo.batches, algo.loss_fn = poisoned, loss
        return algo

    return build


def params_at(workdir, step):
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=1, keep=100)
    steps = ckpt.all_steps()
    params = jax.tree.map(np.asarray, ckpt.restore_params(step)) if step in steps else None
    ckpt.close()
    return steps, params


@pytest.fixture(scope='module')
def clean_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('clean'))
    loop.train(tiny_config(), workdir, with_nan_at(-1))
    return workdir


def test_nan_in_a_batch_stops_and_keeps_the_last_good_checkpoint(clean_run, tmp_path):
    with pytest.raises(
            FloatingPointError, match=r'Non-finite values at step 3 in loss, grad_norm: '
            r'loss=nan, grad_norm=nan'):
        loop.train(tiny_config(), str(tmp_path), with_nan_at(3))
    steps, params = params_at(str(tmp_path), 3)
    assert steps == [1, 2, 3]  # step index 3 would have been saved as 4
    _, clean = params_at(clean_run, 3)
    jax.tree.map(np.testing.assert_array_equal, clean, params)
    # Re-running without the NaN resumes from that checkpoint onto the clean curve.
    loop.train(tiny_config(), str(tmp_path), with_nan_at(-1))
    jax.tree.map(np.testing.assert_array_equal,
                 params_at(clean_run, 6)[1],
                 params_at(str(tmp_path), 6)[1])
    assert curve(tmp_path) == curve(clean_run)


def test_nan_in_a_batch_is_skipped_and_counted(clean_run, tmp_path):
    loop.train(tiny_config(nonfinite='skip'), str(tmp_path), with_nan_at(3))
    rows = curve(tmp_path)
    assert [r['nonfinite_skipped'] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert rows[3]['loss'] is None and np.isfinite(rows[4]['loss'])  # metrics.jsonl: nan -> null
    # The skipped update left parameters (and optimizer state) as they were after step 3, which
    # are exactly the clean run's; afterwards the run goes on from there.
    jax.tree.map(np.testing.assert_array_equal,
                 params_at(clean_run, 3)[1],
                 params_at(str(tmp_path), 4)[1])
    final = params_at(str(tmp_path), 6)[1]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(final))
    assert any(not np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(params_at(clean_run, 6)[1])))


# --- reproducibility ----------------------------------------------------------------------------


def test_same_seed_same_metrics_bitwise(clean_run, tmp_path):
    loop.train(tiny_config(), str(tmp_path / 'again'), with_nan_at(-1))
    assert curve(tmp_path / 'again') == curve(clean_run)
    jax.tree.map(np.testing.assert_array_equal,
                 params_at(clean_run, 6)[1],
                 params_at(str(tmp_path / 'again'), 6)[1])
    loop.train(tiny_config(seed=1), str(tmp_path / 'seed1'), with_nan_at(-1))
    assert curve(tmp_path / 'seed1')[0]['loss'] != curve(clean_run)[0]['loss']


# --- issue 20: two runs on one workdir, and a kill inside the resume's restore -----------------


def test_a_second_run_on_a_live_workdir_is_refused_and_the_first_is_unharmed(
        reference, data, tmp_path):
    """Two identical commands launched together: one takes the workdir and ends exactly as a run
    alone; the other is refused in one line naming it. A third, launched once the lock is held,
    is refused before it imports jax (`workdir.exit_if_busy`)."""
    procs = [launch(tmp_path, data, 1), launch(tmp_path, data, 2)]
    lock = tmp_path / 'run' / workdir_lib.LOCK_FILE
    deadline = time.time() + 300
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.01)
    started = time.time()
    late = launch(tmp_path, data, 3)
    assert late.wait(timeout=120) == 1
    late_s = time.time() - started
    codes = [p.wait(timeout=600) for p in procs]
    assert sorted(codes) == [0, 1], codes
    for n in codes.index(1) + 1, 3:
        message = open(tmp_path / f'launch-{n}.log').read().strip().splitlines()[-1]
        assert message.startswith('error: ') and 'is in use by pid' in message, message
    print(f'a launch on the live workdir refused {late_s:.2f} s after it started: {message}')
    step_a, params_a = final_params(reference)
    step_b, params_b = final_params(tmp_path / 'run')
    assert step_a == step_b == STEPS
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    assert curve(tmp_path / 'run') == curve(reference)


def test_sigkill_inside_the_resumes_restore_loses_nothing(reference, data, tmp_path):
    first = launch(tmp_path, data, 1)
    _wait(first, lambda: len(finished_steps(str(tmp_path / 'run'))) >= 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = launch(tmp_path, data, 2)
    log = str(tmp_path / 'launch-2.log')
    _wait(second, lambda: 'Restoring the latest' in open(log).read())
    second.send_signal(signal.SIGKILL)  # between the listing and the restored state
    second.wait()
    assert 'Restoring the latest' in open(log).read() and 'Resumed from' not in open(log).read()
    third = launch(tmp_path, data, 3)
    assert third.wait(timeout=600) == 0
    assert 'Taking over' in open(tmp_path / 'launch-3.log').read()  # the killed run's lock
    step_a, params_a = final_params(reference)
    step_b, params_b = final_params(tmp_path / 'run')
    assert step_a == step_b == STEPS
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    assert curve(tmp_path / 'run') == curve(reference)
