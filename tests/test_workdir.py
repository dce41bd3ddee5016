"""Reliability II (issue 20): one run a workdir, config drift on resume, damaged checkpoints, a
full disk, and every user-caused error as one line with error.log."""

import errno
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alignjax import checkpoint as ckpt_lib
from alignjax import metrics as metrics_lib
from alignjax import runs
from alignjax import validation
from alignjax import workdir as workdir_lib
from alignjax.data import records as records_lib

import experiment_runs

ROOT = experiment_runs.ROOT
SFT = 'sft.py:tiny,steps=6'
SMALL = {
    'data.num_examples': 64, 'data.batch_size': 8, 'ckpt_every': 2, 'keep_ckpts': 10, 'log_every': 1
}


def run_sft(workdir, **overrides):
    return experiment_runs.run(workdir, SFT, **{**SMALL, **overrides})


def params(workdir, step):
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=1, keep=100)
    out = jax.tree.map(np.asarray, ckpt.restore_params(step))
    ckpt.close()
    return out


def error_log(workdir):
    with open(os.path.join(workdir, validation.ERROR_LOG)) as f:
        return f.read()


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('reference')
    run_sft(workdir)
    return workdir


# --- the lock ------------------------------------------------------------------------------------

_OTHER = ('import sys; from alignjax import workdir as w\n'
          'try:\n    w.WorkdirLock(sys.argv[1]).__enter__()\n'
          'except w.WorkdirBusy as e:\n    print(e); sys.exit(3)\n')


def test_a_second_run_on_a_live_lock_is_refused_naming_the_holder(tmp_path):
    with workdir_lib.WorkdirLock(str(tmp_path)):
        start = time.time()
        out = subprocess.run(
            [sys.executable, '-c', _OTHER, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
            timeout=120)
        assert out.returncode == 3, out.stderr[-2000:]
        assert f'pid {os.getpid()}' in out.stdout and 'in use by' in out.stdout
        assert len(out.stdout.strip().splitlines()) == 1
        print(f'refused in {time.time() - start:.1f} s: {out.stdout.strip()}')
    assert not os.path.exists(tmp_path / workdir_lib.LOCK_FILE)  # released on exit


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    import socket  # pylint: disable=import-outside-toplevel
    (tmp_path / workdir_lib.LOCK_FILE).write_text(
        json.dumps(
            {'host': socket.gethostname(), 'pid': dead.pid, 'start': 0, 'command': 'old run'}))
    with workdir_lib.WorkdirLock(str(tmp_path)) as lock:
        held = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())
        assert held['pid'] == os.getpid() == lock.holder['pid']
    assert 'Taking over' in caplog.text and f'pid {dead.pid}' in caplog.text


def test_another_hosts_lock_is_refused_while_its_heartbeat_is_fresh(tmp_path):
    path = tmp_path / workdir_lib.LOCK_FILE
    path.write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'start': 0, 'command': 'x'}))
    with pytest.raises(workdir_lib.WorkdirBusy, match='elsewhere.*heartbeat'):
        workdir_lib.WorkdirLock(str(tmp_path)).__enter__()
    old = time.time() - 2 * workdir_lib.STALE_S
    os.utime(path, (old, old))
    with workdir_lib.WorkdirLock(str(tmp_path)):
        pass


# --- config drift --------------------------------------------------------------------------------


def test_resume_with_changed_settings_is_refused_or_recorded(reference, tmp_path):
    workdir = tmp_path / 'run'
    run_sft(workdir, total_steps=4)
    with pytest.raises(validation.ValidationError, match=r'optim\.lr 0\.003 -> 0\.001'):
        run_sft(workdir, **{'optim.lr': 1e-3})
    assert 'optim.lr' in error_log(workdir)
    with pytest.raises(validation.ValidationError, match=r'model\.embed_dim 64 -> 32.*another'):
        run_sft(workdir, **{'model.embed_dim': 32, 'allow_config_change': True})
    os.remove(workdir / validation.ERROR_LOG)
    # Operational keys change freely; a longer run needs no flag and is recorded.
    run_sft(workdir, total_steps=6, log_every=2)
    with open(workdir / workdir_lib.HISTORY_FILE) as f:
        history = [json.loads(line) for line in f]
    assert history == [{'step': 4, 'time': history[0]['time'], 'changes': {'total_steps': [4, 6]}}]
    with open(workdir / 'config.json') as f:
        assert json.load(f)['total_steps'] == 6


# --- damaged checkpoints -------------------------------------------------------------------------


def _largest_file(directory):
    files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    return max(files, key=os.path.getsize)


def test_a_truncated_checkpoint_is_skipped_for_the_one_before(reference, tmp_path, caplog):
    workdir = tmp_path / 'run'
    run_sft(workdir)
    damaged = _largest_file(workdir / 'checkpoints' / '6' / 'state')
    with open(damaged, 'r+b') as f:
        f.truncate(os.path.getsize(damaged) // 2)
    os.remove(workdir / 'summary.json')
    run_sft(workdir)  # restores 4 and trains steps 5 and 6 again
    assert 'does not restore' in caplog.text and 'checkpoints/6' in caplog.text
    assert os.path.isdir(workdir / ckpt_lib.DAMAGED_DIR / '6')  # kept, out of the way
    jax.tree.map(np.testing.assert_array_equal, params(reference, 6), params(workdir, 6))
    curve = lambda w: [{k: v
                        for k, v in m.items()
                        if k not in metrics_lib.TIMING_KEYS}
                       for m in metrics_lib.read_metrics(str(w))]
    assert curve(workdir) == curve(reference)


def test_no_restorable_checkpoint_is_one_line_and_changes_nothing(tmp_path):
    workdir = tmp_path / 'run'
    run_sft(workdir, total_steps=2)
    os.remove(workdir / 'checkpoints' / '2' / 'state' / '_METADATA')
    os.remove(workdir / 'summary.json')
    before = sorted(os.listdir(workdir / 'checkpoints'))
    with pytest.raises(validation.ValidationError, match='no checkpoint in .* restores'):
        run_sft(workdir, total_steps=2)
    assert 'nothing was changed' in error_log(workdir)
    assert sorted(os.listdir(workdir / 'checkpoints')) == before


# --- a full disk ---------------------------------------------------------------------------------


def test_a_disk_too_full_for_the_next_checkpoint_stops_before_writing(reference, tmp_path,
                                                                      monkeypatch):
    """The space check: with less free space than the last checkpoint takes, the save is refused
    before orbax writes anything (a real 4 MiB tmpfs does the same; see the issue-20 note)."""
    workdir = tmp_path / 'run'
    real = ckpt_lib.shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        full = len(ckpt_lib.finished_steps(str(workdir / 'checkpoints'))) >= 1
        return usage._replace(free=2**19) if full else usage

    monkeypatch.setattr(ckpt_lib.shutil, 'disk_usage', disk_usage)
    with pytest.raises(
            validation.ValidationError,
            match=r'saving checkpoint 4 .*needs about .* MiB and 0\.5 MiB are free.*step 2'):
        run_sft(workdir)
    assert not [n for n in os.listdir(workdir / 'checkpoints') if 'tmp' in n]
    assert max(m['step'] for m in metrics_lib.read_metrics(str(workdir))) == 2


def test_a_full_disk_during_a_save_stops_in_one_line(reference, tmp_path, monkeypatch):
    workdir = tmp_path / 'run'
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 4:  # what the writer meets on a full disk, after part of the save is written
            os.makedirs(os.path.join(str(self.directory), f'{step}.orbax-checkpoint-tmp'))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
    with pytest.raises(validation.ValidationError,
                       match='saving checkpoint 4 .* No space left on device.*step 2'):
        run_sft(workdir)
    assert 'No space left' in error_log(workdir)
    assert max(m['step'] for m in metrics_lib.read_metrics(str(workdir))) == 2
    jax.tree.map(np.testing.assert_array_equal, params(reference, 2), params(workdir, 2))
    monkeypatch.setattr(ocp.CheckpointManager, 'save', real_save)
    os.remove(workdir / validation.ERROR_LOG)
    run_sft(workdir)  # the space is back: resumes from 2 and ends as the run alone
    jax.tree.map(np.testing.assert_array_equal, params(reference, 6), params(workdir, 6))


# --- one-line errors after validation, and the byte-order mark ----------------------------------


def _preference_file(path, n):
    records_lib.write_jsonl(path,
                            [{'prompt': f'p{i}', 'chosen': 'a', 'rejected': 'b'} for i in range(n)])
    return str(path)


def _prompt_file(path, n):
    records_lib.write_jsonl(path, [{'prompt': f'p{i}'} for i in range(n)])
    return str(path)


@pytest.mark.parametrize('spec,overrides,expected', [
    ('dpo.py:tiny,steps=2',
     lambda d: {'data.train': 'jsonl:' + _preference_file(d / 'one.jsonl', 1)},
     'too few to hold out'),
    ('dpo.py:tiny,steps=2', lambda d: {'reference_from': str(d / 'nowhere')}, 'nowhere'),
    ('sft.py:tiny,steps=2', lambda d: {'init_from': str(d / 'nowhere')}, 'nowhere'),
    ('sft.py:tiny,steps=2', lambda d: {'init_from': str(d)}, 'is not a checkpoint'),
    ('sft.py:tiny,steps=2', lambda d: {'tokenizer': 'sentencepiece'},
     "expected 'byte' or 'hf:DIR'"),
    ('sft.py:tiny,steps=2', lambda d: {'tokenizer': 'hf:' + str(d / 'nowhere')}, 'nowhere'),
    ('sft.py:tiny,steps=2', lambda d: {'optim.schedule': 'step'}, 'config.optim.schedule'),
    ('dpo.py:tiny,steps=2', lambda d: {'loss.types':
        ('sigmoid', 'hinge_x')}, "unknown ['hinge_x']"),
    ('dpo.py:tiny,steps=2', lambda d: {'loss.types': ('simpo', 'sigmoid')}, 'combine it with no'),
    ('dpo.py:tiny,steps=2', lambda d: {'loss.weights': (1.0, 2.0)}, 'config.loss.weights has 2'),
    ('dpo.py:tiny,steps=2', lambda d: {'loss.beta': 0.0}, 'beta'),
    ('reward_model.py:tiny,steps=2', lambda d: {'reward.ensemble': 0}, 'config.reward.ensemble'),
    ('reward_model.py:tiny,steps=2', lambda d: {'reward.ensemble_type': 'bag'}, 'ensemble_type'),
    ('ppo.py:tiny', lambda d: {'rl.kl_in': 'loss_x'}, 'config.rl.kl_in'),
    ('ppo.py:tiny', lambda d: {'rl.aggregation': 'median'}, 'config.rl.aggregation'),
    ('ppo.py:tiny', lambda d: {'rl.kl_estimator': 'k4'}, "expected one of ('k1', 'k2', 'k3')"),
    ('ppo.py:tiny', lambda d: {'rl.minibatches': 7}, 'does not divide the rollout'),
    ('ppo.py:tiny', lambda d: {'rl.epochs': 0}, 'config.rl.epochs'),
    ('ppo.py:tiny', lambda d: {'reward.source': 'oracle'}, 'config.reward.source'),
    ('ppo.py:tiny', lambda d: {'critic_from': 'value_net'}, 'config.critic_from'),
    ('ppo.py:tiny', lambda d: {'critic_from': 'reward_model'}, "needs config.reward.source='rew"),
    ('grpo.py:tiny', lambda d: {'rl.samples_per_prompt': 1}, 'samples_per_prompt'),
    ('ppo.py:tiny', lambda d: {'data.train': 'jsonl:' + _prompt_file(d / 'p.jsonl', 64)},
     "config.reward.source='gold' needs a synthetic"),
    ('nash_md.py:tiny', lambda d: {'nash.preference': 'oracle'}, 'config.nash.preference'),
    ('nash_md.py:tiny,preference=gold',
     lambda d: {'data.train': 'jsonl:' + _prompt_file(d / 'p.jsonl', 64)},
     "config.nash.preference='gold' needs a synthetic"),
    ('nash_md.py:tiny', lambda d: {'nash.tau': 0.0}, 'config.nash.tau'),
    ('nash_md.py:tiny', lambda d: {'nash.mixture': 2.0}, 'config.nash.mixture'),
    ('spo.py:tiny', lambda d: {'rl.samples_per_prompt': 1}, 'samples_per_prompt'),
])
def test_builder_time_errors_are_one_line_with_error_log(tmp_path, spec, overrides, expected):
    workdir = tmp_path / 'run'
    config = experiment_runs.config_of(spec, **overrides(tmp_path))
    with pytest.raises(validation.ValidationError) as e:
        runs.train(config, str(workdir))
    assert expected in str(e.value) and '\n' not in str(e.value)
    assert error_log(workdir) == f'error: {e.value}\n'
    assert not os.path.exists(workdir / workdir_lib.LOCK_FILE)


def test_a_jsonl_file_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / 'bom.jsonl'
    _preference_file(path, 3)
    path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes())
    records = records_lib.read_jsonl(path, 'preference')
    assert [r['prompt'] for r in records] == ['p0', 'p1', 'p2']
