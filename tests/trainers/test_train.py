"""The experiment frame end to end: main, config errors, the loop, resumption, preemption.

Runs `python -m alignjax.main` in subprocesses (as a researcher would) on the tiny SFT experiment
with a few dozen steps, so every run compiles once and finishes in seconds.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from alignjax import checkpoint as ckpt_lib
from alignjax import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT = os.path.join(ROOT, 'experiments', 'sft.py')
STEPS = 40
FLAGS = [
    f'--config={SFT}:tiny,steps={STEPS}', '--config.ckpt_every=10', '--config.log_every=5',
    '--config.eval.num_prompts=8', '--config.keep_ckpts=10'
]
ENV = dict(
    os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1 '
    '--xla_backend_optimization_level=0', JAX_PLATFORMS='cpu')


def run_main(workdir, *extra, wait=True):
    cmd = [sys.executable, '-m', 'alignjax.main', f'--workdir={workdir}', *FLAGS, *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def final_params(workdir):
    """Params of the last checkpoint as NumPy, restored without a template."""
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=1, keep=100)
    step = ckpt.latest_step()
    params = ckpt.restore_params(step)
    ckpt.close()
    return step, jax.tree.map(np.asarray, params)


def curve(workdir):
    return [{k: v
             for k, v in m.items()
             if k not in metrics_lib.TIMING_KEYS}
            for m in metrics_lib.read_metrics(str(workdir))]


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('uninterrupted')
    result = run_main(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_run_writes_outputs_and_learns(reference_run):
    w = reference_run
    for name in ('config.json', 'metrics.jsonl', 'summary.json'):
        assert os.path.exists(os.path.join(w, name)), name
    assert os.path.isdir(os.path.join(w, 'checkpoints', str(STEPS)))
    config = json.load(open(os.path.join(w, 'config.json')))
    assert config['algo'] == 'sft' and config['total_steps'] == STEPS
    rows = curve(w)
    assert [r['step'] for r in rows] == list(range(5, STEPS + 1, 5))
    assert rows[-1]['loss'] < rows[0]['loss'] - 1.0, (rows[0]['loss'], rows[-1]['loss'])
    summary = json.load(open(os.path.join(w, 'summary.json')))
    assert {'gold_reward', 'gold_reward_ref', 'gold_win_rate'} <= set(summary)
    assert summary['step'] == STEPS


@pytest.mark.parametrize('kill_after_ckpt', [20])
def test_sigkill_then_rerun_is_bitwise_identical(reference_run, tmp_path, kill_after_ckpt):
    proc = run_main(tmp_path, wait=False)
    marker = os.path.join(tmp_path, 'checkpoints', str(kill_after_ckpt))
    deadline = time.time() + 300
    while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
    killed_at = ckpt_lib.Checkpointer(os.path.join(tmp_path, 'checkpoints'), save_every=1,
                                      keep=100).latest_step()
    assert killed_at is not None and killed_at < STEPS
    result = run_main(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    step_a, params_a = final_params(reference_run)
    step_b, params_b = final_params(tmp_path)
    assert step_a == step_b == STEPS
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    assert len(curve(reference_run)) == STEPS // 5
    assert curve(tmp_path) == curve(reference_run)


def test_sigterm_saves_and_exits_cleanly_then_resumes(reference_run, tmp_path):
    proc = run_main(tmp_path, wait=False)
    marker = os.path.join(tmp_path, 'checkpoints', '10')
    deadline = time.time() + 300
    while not os.path.isdir(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert 'Preempted' in err
    saved = ckpt_lib.Checkpointer(os.path.join(tmp_path, 'checkpoints'), save_every=1,
                                  keep=100).latest_step()
    assert 10 <= saved < STEPS
    assert not os.path.exists(os.path.join(tmp_path, 'summary.json'))
    result = run_main(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Resumed' in result.stderr
    jax.tree.map(np.testing.assert_array_equal,
                 final_params(reference_run)[1],
                 final_params(tmp_path)[1])
    assert len(curve(reference_run)) == STEPS // 5
    assert curve(tmp_path) == curve(reference_run)


def test_mistyped_override_names_the_key(tmp_path):
    result = run_main(tmp_path, '--config.optim.lrr=1')
    assert result.returncode != 0
    assert "'optim.lrr'" in result.stderr and "'optim.lr'" in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, 'metrics.jsonl'))


def test_unknown_config_argument_names_it(tmp_path):
    cmd = [
        sys.executable, '-m', 'alignjax.main', f'--workdir={tmp_path}',
        f'--config={SFT}:tiny,stpes=3'
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "'stpes'" in result.stderr


def test_broken_jsonl_line_fails_before_training(tmp_path):
    data = tmp_path / 'sft.jsonl'
    lines = [json.dumps({'prompt': 'abc:', 'response': 'aab'})] * 5
    lines.insert(3, '{"prompt": "abc:", "response" "aab"}')
    data.write_text('\n'.join(lines) + '\n')
    workdir = tmp_path / 'w'
    result = run_main(workdir, f'--config.data.train=jsonl:{data}')
    assert result.returncode != 0
    assert f'{data}:4:' in result.stderr
    assert not os.path.exists(workdir / 'metrics.jsonl')
    assert not os.path.exists(workdir / 'checkpoints' / '10')
