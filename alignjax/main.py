r"""Runs an experiment: `python -m alignjax.main --config=experiments/NAME.py[:ARGS] --workdir=DIR`.

Overrides: `--config.optim.lr=3e-4` (the config is locked: a mistyped key is an error that names
it). Re-running the same command resumes from DIR. On a pod, every host runs the same command
with `--distributed` (jax.distributed.initialize() discovers the others).
"""

import sys

from alignjax import workdir as workdir_lib

if __name__ == '__main__':  # a live run's workdir is refused before seconds of imports
    workdir_lib.exit_if_busy(sys.argv[1:])

from absl import app  # noqa: E402 (after the busy check, on purpose)
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alignjax import experiment_lib
from alignjax import memory_plan
from alignjax import metrics
from alignjax import runs
from alignjax import stages
from alignjax import validation

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, summary.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False,
                                 'Call jax.distributed.initialize() (multi-host runs).')
# On TPU pods, Slurm and Open MPI, jax discovers these itself; elsewhere (several processes on
# one machine, a hand-made cluster) every process names the coordinator, the count and itself.
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0 (--distributed; default: detected).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes (--distributed; default: detected).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'This process (--distributed; default: detected).')
_MEMORY_PLAN = flags.DEFINE_enum(
    'memory_plan', 'auto', ['auto', 'on', 'off'],
    'Compile every program of the run ahead of time and refuse a config that does not fit the '
    "devices' memory, naming the largest buffers (alignjax/memory_plan.py). 'auto': for models "
    'larger than the small preset.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    metrics.quiet_library_logs()
    if _DISTRIBUTED.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                                   num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    logging.info('JAX process %d/%d, %d devices (%s)', jax.process_index(), jax.process_count(),
                 jax.device_count(),
                 jax.devices()[0].platform)
    config = _CONFIG.value
    try:
        if config.algo == 'pipeline':  # several runs in one workdir (experiments/quickstart.py)
            stages.run(config, _WORKDIR.value)
        else:
            if memory_plan.should_plan(config, _MEMORY_PLAN.value):
                _check_memory(config, _WORKDIR.value)
            runs.train(config, _WORKDIR.value)
    except (validation.ValidationError, FloatingPointError) as e:
        sys.exit(f'error: {e}')  # one line: what is wrong and where (also in WORKDIR/error.log)


def _check_memory(config, workdir):
    """The memory plan on this run's devices before step 1 (--memory_plan): one more compile of
    each program, abstract (nothing allocated); a refusal goes to WORKDIR/error.log too."""
    log = lambda r: logging.info('memory plan: %s needs %s a device (compiled in %.1f s)', r.name,
                                 memory_plan.fmt_bytes(r.total), r.compile_s)
    try:
        memory_plan.check_run(config, 'local', log=log)
    except memory_plan.DoesNotFit as e:
        message = f'{e} (--memory_plan=off skips this check)'
        validation.write_error_log(workdir, message)
        raise validation.ValidationError(message) from None


def parse_flags(argv):
    """absl flag parsing, after checking --config and its overrides with clear messages; a
    refusal goes to stderr and WORKDIR/error.log, and nothing else is written."""
    try:
        experiment_lib.check_config_args(argv[1:])
        return flags.FLAGS(argv)
    except (ValueError, flags.Error) as e:
        workdir = [a.split('=', 1)[1] for a in argv[1:] if a.startswith('--workdir=')]
        validation.write_error_log(workdir[-1] if workdir else None, str(e), primary=True)
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    flags.mark_flags_as_required(['config', 'workdir'])
    app.run(main, flags_parser=parse_flags)
