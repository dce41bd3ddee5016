"""One run a workdir, and a resumed run is the run it resumes.

* `WorkdirLock`: the first process of a run holds an exclusive lock on `WORKDIR/run.lock` (a
  `flock`, released by the kernel however the holder dies), whose text names the holder (host,
  pid, start time, command line) and is touched every `HEARTBEAT_S`. A second run on a live lock
  is refused in one line naming the holder. A lock left by a dead process is taken over with a
  log line: on this host the `flock` says so at once; from another host, a lock whose heartbeat is
  older than `STALE_S` is taken over (a shared filesystem without working `flock`). On several
  hosts process 0 holds the lock and passes its verdict to the others through the distributed
  runtime's key-value store (no device collective: a refused run must end on every process
  without one process waiting in a collective the others never join), so every process of a
  refused run ends with the same line.
* `exit_if_busy`: the same verdict read before anything heavy is imported (`alignjax.main` calls
  it first), so a second launch on a live run is refused in about a second, not after the
  seconds of importing jax; the lock itself still decides.
* `check_resume`: resuming compares the config with the workdir's `config.json`. What the
  checkpoint depends on (`STRUCTURAL`: algorithm, model shape, tokenizer, data, starting points)
  may never change; other values change only with `config.allow_config_change=True`, and an
  accepted change is appended to `WORKDIR/config_history.jsonl` with the step it took effect
  and logged. `RECORDED` keys (`total_steps`: a run is extended, or stopped early, by resuming
  it with another length) change without the flag but are recorded and logged the same way.
  `FREE` keys (logging, checkpoint cadence, mesh shape, remat) change silently.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time

from absl import logging

from alignjax.errors import ValidationError

LOCK_FILE = 'run.lock'
HISTORY_FILE = 'config_history.jsonl'
HEARTBEAT_S = 30.0
STALE_S = 300.0
ALLOW_KEY = 'allow_config_change'
KV_PREFIX = 'alignjax/workdir_lock'
KV_TIMEOUT_MS = 30 * 60 * 1000  # how long the other processes wait for process 0's verdict

# Keys whose change makes the checkpoint another run's (prefixes end with '.').
STRUCTURAL = ('algo', 'model.', 'tokenizer', 'special_tokens.', 'init_from', 'backbone_from',
              'critic_from', 'reference', 'reference_from', 'reward_model', 'reward.reward_from',
              'reward.source', 'reward.ensemble', 'reward.ensemble_type', 'nash.preference',
              'nash.preference_from', 'data.train', 'data.eval', 'data.num_examples',
              'data.eval_fraction', 'data.num_eval_examples', 'data.chat_template',
              'data.sft_turns')
# Keys a resume may change without the flag, recorded in the history all the same.
RECORDED = ('total_steps',)
# Keys that neither the checkpoint nor the training trajectory depend on.
FREE = (ALLOW_KEY, 'log_every', 'eval_every', 'ckpt_every', 'keep_ckpts', 'async_checkpoint',
        'mesh.shape', 'mesh_shape', 'mesh.rules', 'model.remat', 'model.remat_policy',
        'model.attention', 'model.scan_unroll', 'eval.', 'evaluation.', 'rl.generation_sharding',
        'tracker', 'tracker_project', 'monitors.')


class WorkdirBusy(ValidationError):
    """Another live run holds the workdir."""


class ConfigDrift(ValidationError):
    """A resume whose config differs from the run it resumes."""


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith('.') and key.startswith(p)) for p in patterns)


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder:
        return 'another process (its lock file is empty)'
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('start', 0)))
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {started}: "
            f"{holder.get('command', '?')}")


def _busy(workdir: str, holder: dict, age: float, stale_s: float) -> str:
    return (f'{workdir} is in use by {describe(holder)}; wait for it or stop it, or use another '
            f'--workdir' if age is None else
            f'{workdir} is in use by {describe(holder)} (its heartbeat is {age:.0f} s old; a lock '
            f'older than {stale_s:.0f} s is taken over)')


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def busy_verdict(workdir: str, stale_s: float = STALE_S) -> str:
    """Without touching the lock: the refusal a run on `workdir` would meet now, or ''. A holder on
    this host counts while its process lives; one on another host while its heartbeat is fresh."""
    path = os.path.join(workdir, LOCK_FILE)
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        return ''
    holder = _read(path)
    if not holder or age >= stale_s:
        return ''
    if holder.get('host') == socket.gethostname():
        return _busy(workdir, holder, None, stale_s) if _alive(holder.get('pid')) else ''
    return _busy(workdir, holder, age, stale_s)


def exit_if_busy(argv) -> None:
    """`alignjax.main`'s first step: a `--workdir` held by a live run ends this process with the
    one line the lock would give (nothing is written: the workdir is the other run's)."""
    argv = list(argv)
    workdirs = [
        a.split('=', 1)[1] if '=' in a else argv[i + 1]
        for i, a in enumerate(argv)
        if a.startswith('--workdir=') or (a == '--workdir' and i + 1 < len(argv))
    ]
    refusal = busy_verdict(workdirs[-1]) if workdirs else ''
    if refusal:
        sys.exit(f'error: {refusal}')


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for the block (see the module docstring).

    `process_index` / `kv_client`: on several processes, process 0 takes the lock and the others
    read its verdict from `kv_client` (the distributed runtime's key-value store)."""

    _entered = 0  # locks taken by this process so far: the same sequence on every process

    def __init__(self, workdir: str, *, process_index: int = 0, kv_client=None,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.process_index, self.kv_client = process_index, kv_client
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self._fd = None
        self._stop = threading.Event()
        self._thread = None
        self.holder = {
            'host': socket.gethostname(), 'pid': os.getpid(), 'start': time.time(),
            'command': ' '.join([os.path.basename(sys.executable),
                                 *sys.argv]), 'id': int.from_bytes(os.urandom(6), 'little')
        }

    def __enter__(self):
        WorkdirLock._entered += 1
        key = f'{KV_PREFIX}/{WorkdirLock._entered}'
        if self.process_index == 0:
            try:
                refusal = self._acquire()
            except OSError as e:  # an unwritable workdir: every process says so
                refusal = f'{self.workdir}: cannot hold {LOCK_FILE}: {e}'
            if self.kv_client is not None:
                self.kv_client.key_value_set(key, refusal or 'ok')
        else:
            refusal = self.kv_client.blocking_key_value_get(key, KV_TIMEOUT_MS)
            refusal = '' if refusal == 'ok' else refusal
        if refusal:
            raise WorkdirBusy(refusal)
        return self

    def _acquire(self) -> str:
        os.makedirs(self.workdir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                return _busy(self.workdir, _read(self.path), None, self.stale_s)
            try:  # the holder may have removed the file between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read(self.path)
        if previous:
            age = time.time() - os.fstat(fd).st_mtime
            if previous.get('host') != self.holder['host'] and age < self.stale_s:
                os.close(fd)
                return _busy(self.workdir, previous, age, self.stale_s)
            logging.warning('Taking over %s: its holder (%s) is no longer running', self.path,
                            describe(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        self._thread = threading.Thread(target=self._beat, daemon=True, name='workdir-lock')
        self._thread.start()
        return ''

    def _beat(self):
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self._fd)
            except OSError:  # a full or vanished disk: the run itself will say so
                pass

    def __exit__(self, *exc):
        if self._fd is None:
            return
        self._stop.set()
        self._thread.join()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)  # releases the flock
        self._fd = None


def _flatten(tree, prefix: str = '') -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def config_values(config) -> dict:
    """The flat {dotted key: value} of a config as `config.json` holds it (JSON round trip)."""
    tree = config if isinstance(config, dict) else config.to_dict()
    return _flatten(json.loads(json.dumps(tree, sort_keys=True, default=str)))


def config_changes(old: dict, new: dict) -> dict:
    """{key: (old, new)} over the keys that differ (`None` where a key is absent)."""
    return {
        k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    }


def _fmt(key: str, values) -> str:
    return f'{key} {json.dumps(values[0])} -> {json.dumps(values[1])}'


def check_resume(config, workdir: str, step: int, *, primary: bool = True) -> dict:
    """Resuming `workdir` at checkpoint `step` with `config`: refuses a drift (ConfigDrift, one
    line naming each key with both values), or accepts it (config.allow_config_change) and records
    it. Returns the changes accepted, {key: (old, new)}."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        old = config_values(json.load(f))
    changes = {
        k: v
        for k, v in config_changes(old, config_values(config)).items()
        if not _matches(k, FREE)
    }
    if not changes:
        return {}
    structural = {k: v for k, v in changes.items() if _matches(k, STRUCTURAL)}
    if structural:
        raise ConfigDrift(
            f'{workdir} holds a run (checkpoint step {step}) whose checkpoint depends on what '
            f'this config changes: {"; ".join(_fmt(k, v) for k, v in structural.items())}; '
            f'use another --workdir for a new run')
    refused = {k: v for k, v in changes.items() if not _matches(k, RECORDED)}
    if refused and not config.get(ALLOW_KEY, False):
        raise ConfigDrift(
            f'{workdir} holds a run (checkpoint step {step}) with other settings: '
            f'{"; ".join(_fmt(k, v) for k, v in refused.items())}; use another --workdir for a '
            f'new run, or --config.{ALLOW_KEY}=True to continue this one with the new values')
    if primary:
        with open(os.path.join(workdir, HISTORY_FILE), 'a') as f:
            f.write(
                json.dumps({
                    'step': step, 'time': time.time(),
                    'changes': {k: list(v) for k, v in changes.items()}
                }) + '\n')
    logging.warning('Config changed on resume at step %d: %s', step,
                    '; '.join(_fmt(k, v) for k, v in changes.items()))
    return changes
