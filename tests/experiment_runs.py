"""Running experiment files in process from tests: load, override, train."""

import json
import os

from alignjax import experiment_lib
from alignjax import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_of(spec: str, **overrides):
    """The config of 'NAME.py[:ARGS]' in experiments/, on one device, with dotted overrides."""
    config = experiment_lib.load_config(os.path.join(ROOT, 'experiments', spec))
    config.mesh.shape = (1, 1, 1)  # tests of learning, not sharding: one device is faster
    return override(config, **overrides)


def override(config, **overrides):
    """`config` with dotted-key overrides ('optim.lr': 1e-3) set in place; returns it."""
    for key, value in overrides.items():
        node = config
        *path, last = key.split('.')
        for p in path:
            node = node[p]
        node[last] = value
    return config


def run(workdir, spec: str, **overrides) -> dict:
    """Trains (or resumes) experiment `spec` in `workdir`; returns its summary."""
    config = config_of(spec, **overrides)
    return runs.train(config, str(workdir))


def cached_summary(spec: str) -> dict:
    """The summary of `experiments/<spec>`, trained once per test session into the shared cache
    of starting points (`runs.starting_point`): tests that need the same run (a reward model that
    is also a starting point) train it once, and tests on two workers train different runs at
    the same time."""
    workdir = runs.starting_point(f'experiment:experiments/{spec}', mesh_shape=(1, 1, 1))
    with open(os.path.join(workdir, 'summary.json')) as f:
        return json.load(f)
