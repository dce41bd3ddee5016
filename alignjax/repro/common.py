"""What the reproductions share: running experiment files in process, reading their metrics,
loading trained policies and reward models, and the command line of a reproduction script.

Every reproduction module in `alignjax/repro/` has `run(outdir, quick=False) -> dict` (the
figures, also written to `outdir/NAME.json`), `plot(result, path)` (the PNG, `outdir/NAME.png`)
and a command line:

    python -m alignjax.repro.NAME --outdir=DIR [--quick]

`--quick` (or the environment variable ALIGNJAX_NOTEBOOK_QUICK=1, which the notebook tests set)
shrinks every budget so that the same code path runs in well under a minute once the cached
starting points (the tiny SFT policy, reward models) exist. The runs a reproduction trains go to
`outdir/runs/<name>/`; a run whose `summary.json` exists is read back, not retrained.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time

from alignjax.trainers import common

import numpy as np

QUICK_ENV = 'ALIGNJAX_NOTEBOOK_QUICK'
ONE_DEVICE = (1, 1, 1)


def quick_from_env() -> bool:
    """True when ALIGNJAX_NOTEBOOK_QUICK is set to a true value (notebooks under test)."""
    return os.environ.get(QUICK_ENV, '').lower() in ('1', 'true', 'yes')


CHECKOUT_HINT = ('alignjax.repro trains the experiment files in experiments/ and runs benchmarks/, '
                 'which live in the repository next to the package: clone '
                 'https://github.com/alignjax/alignjax and `pip install -e` it')


def repo_path(*parts: str) -> str:
    """A path in the repository checkout that holds this alignjax; a clear error without one."""
    from alignjax import pretrained  # pylint: disable=g-import-not-at-top
    path = os.path.join(pretrained.REPO_ROOT, *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found. {CHECKOUT_HINT}.')
    return path


def experiments_dir() -> str:
    return repo_path('experiments')


def config_of(spec: str, overrides: dict | None = None):
    """The config of experiments/`spec` ('NAME.py:ARGS') on one device, with dotted overrides
    (`{'eval_every': 50, 'optim.lr': 1e-3}`)."""
    from alignjax import experiment_lib  # pylint: disable=g-import-not-at-top
    config = experiment_lib.load_config(os.path.join(experiments_dir(), spec))
    config.mesh.shape = ONE_DEVICE  # small runs: one device is the fastest on CPU
    for key, value in (overrides or {}).items():
        node = config
        *path, last = key.split('.')
        for p in path:
            node = node[p]
        node[last] = value
    return config


def run(workdir: str, spec: str, overrides: dict | None = None) -> dict:
    """Trains experiment `spec` into `workdir` (or reads back its finished summary); one process
    trains a workdir at a time, others wait and read its summary."""
    path = os.path.join(workdir, 'summary.json')
    os.makedirs(os.path.dirname(os.path.abspath(workdir)), exist_ok=True)
    with open(workdir.rstrip('/') + '.lock', 'w') as lock:  # one trainer per workdir
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return _train(workdir, spec, overrides)


def _train(workdir: str, spec: str, overrides: dict | None) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    from alignjax import runs  # pylint: disable=g-import-not-at-top
    config = config_of(spec, overrides)
    start = time.perf_counter()
    log(f'training {spec} {overrides or ""} -> {workdir}')
    runs.train_starting_points(config, mesh_shape=ONE_DEVICE)
    with jax.set_mesh(common.make_mesh(config)):
        summary = runs.train(config, workdir)
    log(f'  done in {time.perf_counter() - start:.0f} s')
    return summary


def starting_point(spec: str) -> str:
    """The workdir of a cached starting point ('sft.py:tiny'), trained once if missing."""
    from alignjax import runs  # pylint: disable=g-import-not-at-top
    experiments_dir()  # a clear error outside a repository checkout
    return runs.starting_point(f'experiment:experiments/{spec}', mesh_shape=ONE_DEVICE)


def read_metrics(workdir: str) -> list[dict]:
    """The rows of `workdir/metrics.jsonl`."""
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that hold a finite `key`."""
    pairs = [(r['step'], r[key]) for r in rows if r.get(key) is not None]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def mesh():
    from alignjax import sharding  # pylint: disable=g-import-not-at-top
    return sharding.make_mesh(ONE_DEVICE)


def load_policy(workdir: str):
    """(policy Decoder with the latest checkpoint's params, the run's config) of a workdir."""
    import ml_collections  # pylint: disable=g-import-not-at-top
    from alignjax import pretrained  # pylint: disable=g-import-not-at-top
    with open(os.path.join(workdir, 'config.json')) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.mesh.shape = ONE_DEVICE
    config.mesh.rules = None
    policy = common.build_policy(config, mesh())
    pretrained.init_module(policy, workdir)
    return policy, config


def load_reward_model(workdir: str):
    """(reward model, its config) of a finished reward_model run."""
    from alignjax.trainers import reward_model  # pylint: disable=g-import-not-at-top
    return reward_model.load_reward_model(workdir, mesh(), key='reward model')


def save(outdir: str, name: str, result: dict, plot_fn) -> dict:
    """Writes outdir/NAME.json and outdir/NAME.png; returns `result` with their paths."""
    os.makedirs(outdir, exist_ok=True)
    result = dict(result, figure=os.path.join(outdir, f'{name}.png'))
    plot_fn(result, result['figure'])
    with open(os.path.join(outdir, f'{name}.json'), 'w') as f:
        json.dump(result, f, indent=1, default=_jsonable)
    return result


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f'not JSON serialisable: {type(x)}')


def pyplot():
    import matplotlib  # pylint: disable=g-import-not-at-top
    if 'inline' not in matplotlib.get_backend():
        matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
    return plt


def log(msg: str) -> None:
    print(f'[repro] {msg}', flush=True)


def main(run_fn, doc: str) -> None:
    """Command line of a reproduction: --outdir, --quick; prints the figures as JSON."""
    parser = argparse.ArgumentParser(description=doc.split('\n\n')[0])
    parser.add_argument('--outdir', required=True, help='where the PNG, JSON and runs go')
    parser.add_argument('--quick', action='store_true', help='reduced budgets (smoke run)')
    args = parser.parse_args()
    start = time.perf_counter()
    result = run_fn(args.outdir, quick=args.quick or quick_from_env())
    log(f'finished in {time.perf_counter() - start:.0f} s; figure {result["figure"]}')
    print(json.dumps(result.get('figures', result), indent=1, default=_jsonable))
