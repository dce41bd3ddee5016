r"""Runs a sweep of one experiment and tabulates every run's overrides and summary figures.

    python launch/sweep.py --config=experiments/dpo.py:tiny --workdir=/tmp/dpo_sweep \
        --sweep config.loss.beta=0.05,0.1 --sweep config.optim.lr=1e-4,3e-4

A sweep is either the product of repeated `--sweep config.KEY=V1,V2,...` flags, or (without
them) the experiment file's optional `get_hyper(arg)`: a list of override dicts such as
`[{'config.loss.beta': 0.05}, {'config.loss.beta': 0.1, 'config.optim.lr': 3e-4}]` (the
`config.` prefix is optional). Each run is `python -m alignjax.main` in its own workdir
`DIR/<index>-<overrides>`, so re-running the sweep resumes unfinished runs and skips finished
ones (those with a summary.json). Every key is checked against the config before anything runs.

Where the runs go (`--launcher`):
- `local` (default): one after another, or `--parallel=N` at a time; each run's output goes
  to its `log.txt`.
- `tpu_pod`, `slurm`: prints one `launch/tpu_pod.sh` / `launch/slurm_gpu.sh` command per run
  (its own pod slice `sweep-NNN` / job `sweep-NNN`; `--launcher_flag=--zone=...` passes options
  to the script), to run by hand or from a script. DIR is then a path on the pod's or cluster's
  shared storage; `--table_only` later collects the table where DIR is mounted.

At the end DIR/sweep.md and DIR/sweep.csv hold one row per run: its overrides, its status, and
the numbers of its summary.json (nested keys joined by '/'); the Markdown table is printed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ('local', 'tpu_pod', 'slurm')


def parse_value(text: str):
    """'0.1' -> 0.1, '3' -> 3, 'true' -> True, anything else stays a string."""
    lowered = text.lower()
    if lowered in ('true', 'false'):
        return lowered == 'true'
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def normalise_key(key: str) -> str:
    key = key.strip()
    return key[len('config.'):] if key.startswith('config.') else key


def sweep_product(flags: list[str]) -> list[dict]:
    """['config.a=1,2', 'config.b=x,y'] -> the four override dicts, the last flag varying fastest."""
    axes = []
    for flag in flags:
        key, sep, values = flag.partition('=')
        if not sep or not values:
            raise ValueError(f'--sweep {flag!r}: expected config.KEY=V1,V2,...')
        axes.append([(normalise_key(key), parse_value(v)) for v in values.split(',')])
    return [dict(combo) for combo in itertools.product(*axes)]


def load_module(spec: str):
    path = spec.partition(':')[0]
    if not os.path.isfile(path):
        raise ValueError(f'--config: no experiment file {path!r}')
    module_spec = importlib.util.spec_from_file_location('_alignjax_sweep_experiment', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def hyper_of(spec: str) -> list[dict]:
    """The experiment file's get_hyper(arg) (or get_hyper()), keys normalised."""
    module = load_module(spec)
    if not hasattr(module, 'get_hyper'):
        raise ValueError(f'{spec.partition(":")[0]} has no get_hyper(); pass --sweep flags')
    arg = spec.partition(':')[2] or None
    try:
        runs = module.get_hyper(arg)
    except TypeError:
        runs = module.get_hyper()
    return [{normalise_key(k): v for k, v in run.items()} for run in runs]


def format_value(value) -> str:
    """How an override is written on the command line (--config.KEY=VALUE)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [repr(v) if isinstance(v, str) else format_value(v) for v in value]
        return '(' + ','.join(items) + (',)' if len(items) == 1 else ')')
    return str(value)


def run_name(index: int, overrides: dict) -> str:
    """'003-beta=0.1,lr=0.0003': the index keeps names unique and ordered; the rest explains."""
    text = lambda v: '+'.join(map(str, v)) if isinstance(v, (tuple, list)) else format_value(v)
    short = ','.join(f'{k.rsplit(".", 1)[-1]}={text(v)}' for k, v in overrides.items())
    short = re.sub(r'[^A-Za-z0-9=,._+-]', '_', short)[:80]
    return f'{index:03d}-{short}' if short else f'{index:03d}'


def main_args(config: str, workdir: str, overrides: dict, extra: list[str]) -> list[str]:
    """Arguments of `python -m alignjax.main` for one run."""
    args = [f'--config={config}', f'--workdir={workdir}']
    args += [f'--config.{k}={format_value(v)}' for k, v in overrides.items()]
    return args + list(extra)


def check_keys(config: str, runs: list[dict]) -> None:
    """Every override names a key of the config (the same check main.py makes), before any run."""
    from alignjax import experiment_lib  # pylint: disable=g-import-not-at-top
    for run in runs:  # keys and values, as main.py checks them
        args = main_args(config, '', run, [])
        experiment_lib.check_config_args([args[0], *args[2:]])


def flatten(tree, prefix: str = '') -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f'{prefix}{k}/'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def collect(sweep_dir: str, runs: list[tuple[str, dict]], statuses: dict) -> tuple[list, list]:
    """(header, rows): run name, overrides, status, then every summary figure of any run."""
    summaries = {}
    for name, _ in runs:
        path = os.path.join(sweep_dir, name, 'summary.json')
        if os.path.exists(path):
            with open(path) as f:
                summaries[name] = flatten(json.load(f))
    keys = list(dict.fromkeys(k for _, o in runs for k in o))
    figures = list(dict.fromkeys(k for s in summaries.values() for k in s))
    header = ['run', *keys, 'status', *figures]
    rows = []
    for name, overrides in runs:
        status = statuses.get(name, 'done' if name in summaries else 'missing')
        s = summaries.get(name, {})
        rows.append(
            [name, *(overrides.get(k, '') for k in keys), status, *(s.get(k, '') for k in figures)])
    return header, rows


def _cell(value) -> str:
    if isinstance(value, float):
        return f'{value:.4g}'
    return format_value(value) if isinstance(value, (tuple, list, bool)) else str(value)


def markdown(header, rows) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(_cell(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def write_tables(sweep_dir: str, header, rows) -> str:
    md = markdown(header, rows)
    with open(os.path.join(sweep_dir, 'sweep.md'), 'w') as f:
        f.write(md)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(
        [[format_value(v) if isinstance(v, (tuple, list)) else v for v in row] for row in rows])
    with open(os.path.join(sweep_dir, 'sweep.csv'), 'w') as f:
        f.write(buf.getvalue())
    return md


def run_local(commands: dict[str, list[str]], sweep_dir: str, parallel: int) -> dict:
    """Runs every command, `parallel` at a time; returns {name: status}."""
    pending = list(commands.items())
    running, statuses = {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            name, cmd = pending.pop(0)
            log = open(os.path.join(sweep_dir, name, 'log.txt'), 'a')
            print(f'[sweep] start {name}: {shlex.join(cmd)}', flush=True)
            running[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log,
                                              stderr=subprocess.STDOUT), log, time.time())
        for name, (proc, log, start) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            ok = proc.returncode == 0
            statuses[name] = 'done' if ok else f'failed (exit {proc.returncode})'
            if ok and not os.path.exists(os.path.join(sweep_dir, name, 'summary.json')):
                statuses[name] = 'stopped'  # preempted: saved, re-run the sweep to resume
            print(
                f'[sweep] {"done" if ok else "FAILED"} {name} in {time.time() - start:.0f} s' +
                ('' if ok else f'; see {os.path.join(sweep_dir, name, "log.txt")}'), flush=True)
        time.sleep(0.2)
    return statuses


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='experiments/NAME.py[:ARGS]')
    p.add_argument('--workdir', required=True, help='sweep directory; one subdirectory per run')
    p.add_argument('--sweep', action='append', default=[], metavar='config.KEY=V1,V2',
                   help='one axis of the sweep; repeated flags give their product')
    p.add_argument('--parallel', type=int, default=1, help='local runs at a time')
    p.add_argument('--launcher', choices=LAUNCHERS, default='local')
    p.add_argument('--launcher_flag', action='append', default=[], metavar='--OPTION=VALUE',
                   help='an option for launch/tpu_pod.sh or launch/slurm_gpu.sh (repeatable)')
    p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
    p.add_argument('--table_only', action='store_true',
                   help='only (re)build the table from the run directories')
    p.add_argument('extra', nargs='*', help='after --: more arguments for every run')
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if ROOT not in sys.path:  # experiment files import alignjax
        sys.path.insert(0, ROOT)
    runs = sweep_product(a.sweep) if a.sweep else hyper_of(a.config)
    if not runs:
        raise SystemExit('error: the sweep is empty')
    try:
        check_keys(a.config, runs)
    except ValueError as e:
        raise SystemExit(f'error: {e}') from None
    named = [(run_name(i, o), o) for i, o in enumerate(runs)]
    # One workdir a run (the index makes names unique; each run also locks its own workdir).
    assert len({name for name, _ in named}) == len(named), [name for name, _ in named]
    commands, statuses = {}, {}
    local = a.launcher == 'local'
    # Local runs start in the repository root: absolute paths keep the user's meaning. Pod and
    # cluster commands keep them as given: relative to the code on the workers, a shared workdir.
    path, sep, arg = a.config.partition(':')
    config = os.path.abspath(path) + sep + arg if local else a.config
    sweep_dir = os.path.abspath(a.workdir) if local else a.workdir
    for name, overrides in named:
        args = main_args(config, os.path.join(sweep_dir, name), overrides, a.extra)
        if local:
            commands[name] = [sys.executable, '-m', 'alignjax.main', *args]
        else:
            script = 'launch/tpu_pod.sh' if a.launcher == 'tpu_pod' else 'launch/slurm_gpu.sh'
            flag = '--name' if a.launcher == 'tpu_pod' else '--job_name'
            commands[name] = [script, f'{flag}=sweep-{name[:3]}', *a.launcher_flag, '--', *args]
    if not local or a.dry_run:
        for cmd in commands.values():
            print(shlex.join(cmd))
        return 0
    os.makedirs(sweep_dir, exist_ok=True)
    if not a.table_only:
        todo = {}
        for name, cmd in commands.items():
            os.makedirs(os.path.join(sweep_dir, name), exist_ok=True)
            if os.path.exists(os.path.join(sweep_dir, name, 'summary.json')):
                print(f'[sweep] {name}: finished earlier; skipped', flush=True)
            else:
                todo[name] = cmd
        statuses = run_local(todo, sweep_dir, max(a.parallel, 1))
    header, rows = collect(sweep_dir, named, statuses)
    print(write_tables(sweep_dir, header, rows), end='')
    print(f'[sweep] tables: {os.path.join(sweep_dir, "sweep.md")}, '
          f'{os.path.join(sweep_dir, "sweep.csv")}')
    return 1 if any(s.startswith('failed') for s in statuses.values()) else 0


if __name__ == '__main__':
    sys.exit(main())
