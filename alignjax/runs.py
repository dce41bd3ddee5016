"""The top floor: a run together with the runs it starts from.

A config's starting points (`init_from`, `reference_from`, `backbone_from`, `reward.reward_from`,
`nash.preference_from`) may name an experiment (`experiment:experiments/sft.py:tiny`) rather than
a finished workdir. Such an entry is a whole training run of its own, cached by the hash of its
config (`pretrained.cache_entry`); `train` trains every missing one (and, recursively, the ones
they start from) before the run's models are built, and the trainers below only ever load
finished workdirs (`pretrained`). Multi-stage runs (`stages`) and the reproductions (`repro/`)
sit on this floor too.

Order within a run, unchanged by where the code lives: the loop validates the config first (a
bad key costs nothing), then the builder runs, and its first act is to train the starting points
it is missing, so the run's workdir lock is held while they train.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

import jax
import numpy as np
from absl import logging

from alignjax import pretrained
from alignjax import specs
from alignjax import trainers
from alignjax import validation
from alignjax.trainers import common
from alignjax.trainers import loop


def train(config, workdir: str) -> dict:
    """Runs (or resumes) `config` in `workdir` after training the `experiment:` starting points
    it names; returns the final summary (`loop.train`)."""
    build = trainers.get_builder(config.algo)

    def build_from_trained_starts(config, mesh):
        train_starting_points(config)
        return build(config, mesh)

    return loop.train(config, workdir, build_from_trained_starts)


def train_starting_points(config, *, mesh_shape=None) -> None:
    """Trains (once, cached) each `experiment:` starting point of `config` that is missing."""
    for key, spec in validation.starting_points(config):
        if specs.Start.parse(spec).kind == 'experiment':
            starting_point(spec, key=key, mesh_shape=mesh_shape)


def starting_point(spec: str, *, key: str = 'init_from', mesh_shape=None) -> str:
    """The cache workdir of an `experiment:` spec, trained first if missing.

    `mesh_shape` may choose the devices a missing entry is trained on (the cache key leaves the
    mesh out). One trainer per entry, even across concurrent runs (parallel tests, sweeps): the
    entry's lock file is held while it trains. In a multi-process run the training is
    collective: process 0 holds the lock and decides, the others follow its answer (a lock of
    their own would wait on a collective forever).
    """
    workdir, config = pretrained.cache_entry(spec)
    if mesh_shape is not None:
        config.mesh.shape = tuple(mesh_shape)
    os.makedirs(pretrained.cache_root(), exist_ok=True)
    primary = jax.process_index() == 0
    with open(workdir + '.lock', 'w') if primary else contextlib.nullcontext() as lock:
        if primary:
            fcntl.flock(lock, fcntl.LOCK_EX)
        done = pretrained.is_trained(workdir)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
            done = bool(multihost_utils.broadcast_one_to_all(np.int32(done)))
        if not done:
            logging.info('config.%s=%r: training it once into %s', key, spec, workdir)
            with jax.set_mesh(common.make_mesh(config)):
                train(config, workdir)
    return workdir
