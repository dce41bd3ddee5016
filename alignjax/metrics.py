"""Metrics that people and programs can read: JSON lines, TensorBoard, a progress line.

``MetricsWriter`` appends one JSON object per logged step to ``DIR/metrics.jsonl``
(always with ``step``), mirrors the scalars to TensorBoard under
``DIR/tensorboard``, and logs a line such as::

    step 120/500 | loss 1.234 | gold_reward 0.41 | 12.3 steps/s | 4.1k tok/s | ETA 0:00:31

Conventions:

* Values are converted to Python numbers (jax/numpy scalars included); integers
  stay integers, everything else becomes a float. Non-finite floats (nan, inf)
  are written as JSON ``null`` so every line parses with ``json.loads``.
* Each record also carries the timing keys in ``TIMING_KEYS``: ``steps_per_s``
  and ``tokens_per_s`` over the interval since the previous ``write`` (the first
  since construction or ``truncate_after``), and ``eta_s`` from the mean step
  rate. They vary from run to run: drop them before comparing curves.
* On resume call ``truncate_after(restored_step)``: later lines are dropped and
  TensorBoard is told to purge later events, so the curve continues without
  duplicates.
* Only the primary process writes; on the others every method is a no-op.
"""

import datetime
import json
import math
import os
import logging as logging_std
import time

from absl import flags
from absl import logging
import numpy as np

TIMING_KEYS = ('steps_per_s', 'tokens_per_s', 'eta_s')
METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
TENSORBOARD_DIR = 'tensorboard'


def to_json_value(value):
    """Converts a scalar, or nested dicts/lists of them, to JSON-safe Python values."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    array = np.asarray(value)
    if array.ndim != 0:
        raise ValueError(f'Expected a scalar, got an array of shape {array.shape}')
    if array.dtype == np.bool_:
        return bool(array)
    if np.issubdtype(array.dtype, np.integer):
        return int(array)
    number = float(array)
    return number if math.isfinite(number) else None


def read_metrics(workdir: str) -> list[dict]:
    """Returns the records of ``workdir/metrics.jsonl`` in file order."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def _atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to a temporary file next to ``path`` and renames it over ``path``."""
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _drop_partial_tail(path: str) -> None:
    """Truncates a last line cut short by a crash, so appends start on a fresh line."""
    if not os.path.exists(path):
        return
    with open(path, 'rb+') as f:
        data = f.read()
        if data and not data.endswith(b'\n'):
            f.truncate(data.rfind(b'\n') + 1)


def _format_rate(rate: float) -> str:
    for threshold, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if rate >= threshold:
            return f'{rate / threshold:.1f}{suffix}'
    return f'{rate:.1f}' if rate >= 10 else f'{rate:.2f}'


def _format_value(value) -> str:
    if value is None:
        return 'nan'
    if isinstance(value, float):
        return f'{value:.4g}'
    return str(value)


class MetricsWriter:
    """Writes per-step metrics to JSON lines and TensorBoard, and logs progress."""
    def __init__(self, workdir: str, *, total_steps: int, is_primary: bool = True,
                 tensorboard: bool = True, tracker=None):
        """Opens ``workdir/metrics.jsonl`` for appending (primary process only).

        Args:
            workdir: the run directory.
            total_steps: the run's last step, for progress and ETA.
            is_primary: whether this process writes (e.g. ``jax.process_index() == 0``).
            tensorboard: also write TensorBoard scalars under ``workdir/tensorboard``.
            tracker: an experiment tracker (``alignjax.tracking``) sent the same scalars as
                TensorBoard, closed with this writer; None for none.
        """
        self.workdir = workdir
        self.total_steps = total_steps
        self.is_primary = is_primary
        self._use_tensorboard = tensorboard
        self._file = None
        self._tb = None
        self._tracker = tracker
        self._reset_clock(0)
        if not is_primary:
            return
        os.makedirs(workdir, exist_ok=True)
        self._path = os.path.join(workdir, METRICS_FILE)
        _drop_partial_tail(self._path)
        self._file = open(self._path, 'a')
        self._open_tensorboard(purge_step=None)

    def drop_after(self, step: int) -> None:
        """Cuts ``metrics.jsonl`` back to the rows up to ``step`` in place (no new file: this is
        what runs when a disk is full), for a run that stops at its last checkpoint ``step``."""
        if not self.is_primary:
            return
        try:
            self._file.flush()
        except OSError:
            pass  # the rows that did not fit are past `step` anyway
        keep = 0
        with open(self._path, 'rb') as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    break
                if not isinstance(record, dict) or record.get('step', math.inf) > step:
                    break
                keep += len(line)
        os.truncate(self._path, keep)
        self._file.seek(0, os.SEEK_END)

    def _reset_clock(self, step: int) -> None:
        self._start_step = self._last_step = step
        self._start_time = self._last_time = time.monotonic()

    def _open_tensorboard(self, purge_step):
        if self._use_tensorboard:
            import tensorboardX  # pylint: disable=import-outside-toplevel
            self._tb = tensorboardX.SummaryWriter(os.path.join(self.workdir, TENSORBOARD_DIR),
                                                  purge_step=purge_step)

    def truncate_after(self, step: int) -> None:
        """Drops records with ``step`` above ``step`` and restarts the clock there.

        Call it after restoring checkpoint ``step``. The file is rewritten
        atomically; unparseable lines (a crash mid-write) are dropped too.
        """
        self._reset_clock(step)
        if not self.is_primary:
            return
        self._file.close()
        kept = []
        with open(self._path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    logging.warning('Dropping unparseable line in %s: %r', self._path, line)
                    continue
                if isinstance(record, dict) and record.get('step', math.inf) <= step:
                    kept.append(line if line.endswith('\n') else line + '\n')
        _atomic_write_text(self._path, ''.join(kept))
        self._file = open(self._path, 'a')
        if self._tb is not None:
            self._tb.close()
            self._open_tensorboard(purge_step=step + 1)

    def write(self, step: int, metrics: dict, *, tokens: int | None = None,
              timed: bool = True) -> None:
        """Records ``metrics`` at ``step`` and logs the progress line.

        Args:
            step: the training step the metrics belong to.
            metrics: name -> scalar (Python, numpy or jax). Names may not be
                ``step`` or a timing key.
            tokens: tokens processed since the previous ``write`` (or since
                construction / ``truncate_after``); enables ``tokens_per_s``.
            timed: False for records that are not training progress (evaluations):
                no rates, and the throughput clock is left alone.
        """
        if not self.is_primary:
            return
        reserved = {'step', *TIMING_KEYS} & set(metrics)
        if reserved:
            raise ValueError(f'Reserved metric names: {sorted(reserved)}')
        record = {'step': int(step)}
        record.update({k: to_json_value(v) for k, v in metrics.items()})
        if timed:
            record.update(self._update_rates(int(step), tokens))
        self._file.write(json.dumps(record, allow_nan=False) + '\n')
        self._file.flush()
        scalars = {
            f'timing/{name}' if name in TIMING_KEYS else name: value
            for name, value in record.items()
            if name != 'step' and isinstance(value, (int, float))
        }
        if self._tb is not None:
            for tag, value in scalars.items():
                self._tb.add_scalar(tag, value, int(step))
            self._tb.flush()
        if self._tracker is not None:
            self._tracker.log(int(step), scalars)
        logging.info('%s', self.progress_line(step, record))

    def _update_rates(self, step: int, tokens: int | None) -> dict:
        now = time.monotonic()
        interval = max(now - self._last_time, 1e-9)
        rates = {'steps_per_s': (step - self._last_step) / interval}
        if tokens is not None:
            rates['tokens_per_s'] = float(tokens) / interval
        mean_rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
        if mean_rate > 0:
            rates['eta_s'] = max(self.total_steps - step, 0) / mean_rate
        self._last_step, self._last_time = step, now
        return rates

    def progress_line(self, step, metrics) -> str:
        """Formats step, metrics and the rates they carry (timing keys) as one line."""
        parts = [f'step {int(step)}/{self.total_steps}']
        for name, value in metrics.items():
            if name != 'step' and name not in TIMING_KEYS:
                parts.append(f'{name} {_format_value(to_json_value(value))}')
        rates = {k: metrics[k] for k in TIMING_KEYS if k in metrics}
        if 'steps_per_s' in rates:
            parts.append(f"{_format_rate(rates['steps_per_s'])} steps/s")
        if 'tokens_per_s' in rates:
            parts.append(f"{_format_rate(rates['tokens_per_s'])} tok/s")
        if 'eta_s' in rates:
            parts.append(f"ETA {datetime.timedelta(seconds=round(rates['eta_s']))}")
        return ' | '.join(parts)

    def write_summary(self, summary: dict) -> None:
        """Atomically writes ``summary`` (nested scalars allowed) to ``DIR/summary.json``."""
        if not self.is_primary:
            return
        text = json.dumps(to_json_value(summary), indent=2, sort_keys=True, allow_nan=False)
        _atomic_write_text(os.path.join(self.workdir, SUMMARY_FILE), text + '\n')

    def close(self) -> None:
        """Flushes and closes the files; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _QuietLibraries(logging_std.Filter):
    """Drops INFO chatter of orbax and JAX internals; warnings and errors still pass."""

    _PREFIXES = ('orbax', 'jax._src', 'etils', 'tensorstore')

    def filter(self, record):
        if record.levelno >= logging_std.WARNING:
            return True
        path = record.pathname.replace('\\', '/')
        return not any(f'/{p.replace(".", "/")}/' in path for p in self._PREFIXES)


def show_progress() -> None:
    """Runs called from Python (a notebook, a script without absl's `app.run`) print the progress
    lines `main` prints: until absl's flags are parsed it drops INFO lines, so such a run showed
    nothing. A verbosity set by the caller (anything but absl's default) is left alone."""
    if flags.FLAGS.is_parsed() or logging.get_verbosity() != logging.WARNING:
        return
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    quiet_library_logs()


def quiet_library_logs() -> None:
    """Keeps stdout to alignjax's own progress lines (idempotent)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
