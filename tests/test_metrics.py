"""Tests for alignjax.metrics: JSON lines, resume truncation, TensorBoard, progress."""

import glob
import json
import os
import re
import struct
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from alignjax import metrics as metrics_lib
from alignjax.metrics import TIMING_KEYS, MetricsWriter, read_metrics

import experiment_runs


def _strict_lines(workdir):
    """Parses metrics.jsonl rejecting the NaN/Infinity tokens json.loads accepts by default."""
    def reject(token):
        raise ValueError(f'non-standard JSON token {token}')

    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line, parse_constant=reject) for line in f]


def _tensorboard_events(workdir):
    """Reads the events of the TFRecord event files under workdir/tensorboard."""
    events = []
    for path in sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.*'))):
        with open(path, 'rb') as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack('<Q', data[pos:pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def _tensorboard_scalars(workdir):
    """(tag, step, value) of every scalar written under workdir/tensorboard."""
    return [(value.tag, event.step, value.simple_value)
            for event in _tensorboard_events(workdir)
            for value in event.summary.value]


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(metrics_lib.time, 'monotonic', fake)
    return fake


def test_lines_parse_carry_step_and_python_types(tmp_path):
    with MetricsWriter(str(tmp_path), total_steps=30, tensorboard=False) as writer:
        writer.write(10, {'loss': jnp.float32(1.5), 'acc': np.float64(0.25), 'n': np.int32(7)},
                     tokens=640)
        writer.write(20, {'loss': 1.25, 'acc': 0.5, 'n': 9})
    lines = _strict_lines(str(tmp_path))
    assert lines == read_metrics(str(tmp_path))
    assert [r['step'] for r in lines] == [10, 20]
    first = lines[0]
    assert first['loss'] == 1.5 and first['acc'] == 0.25
    assert first['n'] == 7 and isinstance(first['n'], int)
    assert set(TIMING_KEYS) <= set(first)
    assert 'tokens_per_s' not in lines[1]  # no token count given
    assert set(lines[1]) - set(TIMING_KEYS) == {'step', 'loss', 'acc', 'n'}


def test_rates_eta_and_progress_line(tmp_path, clock):
    writer = MetricsWriter(str(tmp_path), total_steps=500, tensorboard=False)
    clock.now += 2.0
    writer.write(10, {'loss': 1.2344, 'gold_reward': 0.41}, tokens=8200)
    record = read_metrics(str(tmp_path))[0]
    assert record['steps_per_s'] == pytest.approx(5.0)
    assert record['tokens_per_s'] == pytest.approx(4100.0)
    assert record['eta_s'] == pytest.approx(98.0)
    line = writer.progress_line(10, record)
    assert line == 'step 10/500 | loss 1.234 | gold_reward 0.41 | 5.00 steps/s | 4.1k tok/s | ETA 0:01:38'
    clock.now += 8.0  # 110 steps in this 8 s interval, 120 steps in 10 s overall
    writer.write(120, {'loss': 1.0}, tokens=41000)
    record = read_metrics(str(tmp_path))[1]
    assert record['steps_per_s'] == pytest.approx(110 / 8.0)
    assert record['tokens_per_s'] == pytest.approx(41000 / 8.0)
    assert record['eta_s'] == pytest.approx(380 / 12.0)  # mean rate 120 steps / 10 s
    assert re.fullmatch(r'step 120/500 \| loss 1 \| 13\.8 steps/s \| 5\.1k tok/s \| ETA 0:00:32',
                        writer.progress_line(120, record))
    writer.close()


def test_truncate_after_drops_later_steps_and_partial_lines(tmp_path, clock):
    writer = MetricsWriter(str(tmp_path), total_steps=60)
    for step in (10, 20, 30, 40, 50):
        clock.now += 1.0
        writer.write(step, {'loss': step / 10})
    writer.close()
    with open(tmp_path / 'metrics.jsonl', 'a') as f:
        f.write('{"step": 60, "loss"')  # killed mid-line

    resumed = MetricsWriter(str(tmp_path), total_steps=60)
    assert [r['step'] for r in read_metrics(str(tmp_path))] == [10, 20, 30, 40, 50]
    resumed.truncate_after(30)
    assert [r['step'] for r in read_metrics(str(tmp_path))] == [10, 20, 30]
    clock.now += 4.0
    resumed.write(40, {'loss': 4.5})
    resumed.close()
    records = read_metrics(str(tmp_path))
    assert [r['step'] for r in records] == [10, 20, 30, 40]
    assert records[-1]['loss'] == 4.5
    assert records[-1]['steps_per_s'] == pytest.approx(10 / 4.0)  # clock restarted at 30
    assert not [n for n in os.listdir(tmp_path) if '.tmp' in n]


def test_non_finite_values_are_null(tmp_path):
    with MetricsWriter(str(tmp_path), total_steps=5, tensorboard=False) as writer:
        writer.write(1, {'a': float('nan'), 'b': jnp.float32(jnp.inf), 'c': -np.inf, 'd': 2.0})
    (record,) = _strict_lines(str(tmp_path))
    assert record['a'] is None and record['b'] is None and record['c'] is None
    assert record['d'] == 2.0
    assert 'a nan' in writer.progress_line(1, {'a': float('nan')})


def test_reserved_and_non_scalar_metrics_raise(tmp_path):
    with MetricsWriter(str(tmp_path), total_steps=5, tensorboard=False) as writer:
        with pytest.raises(ValueError, match='steps_per_s'):
            writer.write(1, {'steps_per_s': 1.0})
        with pytest.raises(ValueError, match='shape'):
            writer.write(1, {'loss': np.ones(3)})


def test_summary_is_written_atomically(tmp_path, monkeypatch):
    writer = MetricsWriter(str(tmp_path), total_steps=5, tensorboard=False)
    writer.write_summary({
        'gold_reward': jnp.float32(0.5), 'gold_reward_ref': 0.25,
        'per_task': {'x': [1, np.float32(np.nan)]}
    })
    path = tmp_path / 'summary.json'
    assert json.loads(path.read_text()) == {
        'gold_reward': 0.5, 'gold_reward_ref': 0.25, 'per_task': {'x': [1, None]}
    }

    def crash(src, dst):
        raise OSError('killed before rename')

    monkeypatch.setattr(metrics_lib.os, 'replace', crash)
    with pytest.raises(OSError):
        writer.write_summary({'gold_reward': 0.9})
    assert json.loads(path.read_text())['gold_reward'] == 0.5  # old file intact
    writer.close()


def test_tensorboard_scalars_and_purge_on_resume(tmp_path):
    with MetricsWriter(str(tmp_path), total_steps=5) as writer:
        writer.write(1, {'loss': 0.75}, tokens=10)
        writer.write(2, {'loss': 0.5, 'bad': float('nan')}, tokens=10)
    scalars = _tensorboard_scalars(str(tmp_path))
    assert ('loss', 1, 0.75) in scalars and ('loss', 2, 0.5) in scalars
    assert {tag for tag, _, _ in scalars
           } == {'loss', 'timing/steps_per_s', 'timing/tokens_per_s', 'timing/eta_s'}
    with MetricsWriter(str(tmp_path), total_steps=5) as writer:
        writer.truncate_after(1)
        writer.write(2, {'loss': 0.25})
    purges = [
        event.step
        for event in _tensorboard_events(str(tmp_path))
        if event.session_log.status == event_pb2.SessionLog.START
    ]
    assert purges == [2]  # TensorBoard hides the pre-resume events from step 2 on
    assert ('loss', 2, 0.25) in _tensorboard_scalars(str(tmp_path))


def test_non_primary_writes_nothing(tmp_path):
    workdir = tmp_path / 'run'
    writer = MetricsWriter(str(workdir), total_steps=5, is_primary=False)
    writer.truncate_after(0)
    writer.write(1, {'loss': 1.0}, tokens=5)
    writer.write_summary({'gold_reward': 1.0})
    writer.close()
    assert not workdir.exists()


def test_untimed_write_has_no_rates_and_keeps_the_clock(tmp_path, clock):
    writer = MetricsWriter(str(tmp_path), total_steps=100, tensorboard=False)
    clock.now += 1.0
    writer.write(10, {'loss': 1.0})
    clock.now += 1.0
    writer.write(10, {'eval/accuracy': 0.75}, timed=False)
    clock.now += 1.0
    writer.write(20, {'loss': 0.5})
    rows = read_metrics(str(tmp_path))
    assert rows[1] == {'step': 10, 'eval/accuracy': 0.75}
    # The interval 10 -> 20 spans 2 s of wall time, evaluation included.
    assert rows[2]['steps_per_s'] == pytest.approx(5.0)
    assert 'steps/s' not in writer.progress_line(10, rows[1])


IN_PROCESS = r"""
import sys
sys.path.insert(0, 'tests')
import experiment_runs
experiment_runs.run(sys.argv[1], 'sft.py:tiny,steps=4', log_every=2, ckpt_every=2)
"""


def test_a_run_called_from_python_prints_its_progress(tmp_path):
    """As a notebook calls it (no absl app.run): the progress lines reach stderr."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
               JAX_PLATFORMS='cpu')
    out = subprocess.run(
        [sys.executable, '-c', IN_PROCESS, str(tmp_path / 'run')], cwd=root, env=env,
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r'step 2/4 \| .*loss', out.stderr) and 'step 4/4' in out.stderr, \
        out.stderr[-3000:]


def _wandb_records(path):
    """The protobuf records of an offline W&B run file (LevelDB log blocks of 32 KiB)."""
    from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:4] == b':W&B'
    pos, block, parts, out = 7, 32768, b'', []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):
            pos += left
            continue
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            out.append(record)
            parts = b''
    return out


def test_the_tracker_gets_the_scalars_and_the_config(tmp_path, monkeypatch):
    """config.tracker=wandb, offline: every metrics.jsonl scalar of every step, and the config."""
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    workdir = tmp_path / 'run'
    experiment_runs.run(workdir, 'sft.py:tiny,steps=4', log_every=2, ckpt_every=2, tracker='wandb',
                        tracker_project='test')
    files = glob.glob(str(workdir / 'wandb' / 'offline-run-*' / 'run-*.wandb'))
    assert len(files) == 1
    records = _wandb_records(files[0])
    history = {}
    for r in records:
        if r.WhichOneof('record_type') == 'history':
            items = {
                i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            history.setdefault(items.pop('_step'),
                               {}).update({k: v for k, v in items.items() if not k.startswith('_')})
    rows = read_metrics(str(workdir))
    assert sorted(history) == sorted({r['step'] for r in rows})
    for row in rows:
        want = {
            f'timing/{k}' if k in TIMING_KEYS else k: v
            for k, v in row.items()
            if k != 'step' and isinstance(v, (int, float))
        }
        assert {k: history[row['step']][k] for k in want} == pytest.approx(want), row['step']
    config = [r.run.config for r in records if r.WhichOneof('record_type') == 'run']
    keys = {item.key: json.loads(item.value_json) for c in config for item in c.update}
    assert keys['algo'] == {'value': 'sft'} or keys['algo'] == 'sft'
    assert json.loads(open(workdir / 'tracker.json').read())['wandb_id']
