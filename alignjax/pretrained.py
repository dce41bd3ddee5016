"""Starting points: parameters from another run's workdir, or from an experiment trained on demand.

`config.init_from` (and the reward model's `config.backbone_from`) accept:

- `''`: start from scratch;
- a workdir: the params of its latest checkpoint;
- `hf:DIR`: a Hugging Face checkpoint directory (config.json + safetensors); the model must be
  built with its architecture (experiment argument `model=hf:DIR`, i.e. `config.model` from its
  config.json); heads the checkpoint lacks (reward, value) keep their fresh initialisation;
- `experiment:PATH[:ARGS]`: the experiment `PATH` with `ARGS` (e.g.
  `experiment:experiments/sft.py:tiny`), trained once into a cache directory keyed by the hash of
  its resolved config and reused afterwards. This is how every `:tiny` preset runs standalone from
  a fresh workdir. The cache lives in `$ALIGNJAX_CACHE` (default `~/.cache/alignjax`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from alignjax import checkpoint as ckpt_lib
from alignjax import experiment_lib
from alignjax import specs
from alignjax import trainers
from alignjax.interop import hf
from alignjax.trainers import common
from alignjax.trainers import loop

REPO_ROOT = experiment_lib.REPO_ROOT

# The version of the checkpoint layout (2: scanned layers stored stacked); part of the cache key.
CHECKPOINT_LAYOUT = 2


def cache_root() -> str:
    return os.environ.get('ALIGNJAX_CACHE', os.path.expanduser('~/.cache/alignjax'))


def resolve(spec: str, *, key: str = 'init_from', mesh_shape=None) -> str:
    """The workdir behind a starting-point spec, training an `experiment:` spec if needed.

    The cache key leaves out the mesh (sharding changes how, not what, is computed), so
    `mesh_shape` may choose the devices a missing entry is trained on.
    """
    start = specs.Start.parse(spec)
    if start.kind != 'experiment':
        if not os.path.isdir(os.path.join(spec, 'checkpoints')):
            raise FileNotFoundError(f'config.{key}={spec!r}: no checkpoints/ directory there')
        return spec
    exp = experiment_lib.experiment_path(start.value)
    config = experiment_lib.load_config(exp)
    fields = {k: v for k, v in config.to_dict().items() if k not in ('mesh', 'allow_config_change')}
    # Entries written before scanned layers were stored stacked hold the same config.
    fields['layout'] = CHECKPOINT_LAYOUT
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    if mesh_shape is not None:
        config.mesh.shape = tuple(mesh_shape)
    name = os.path.basename(exp.split(':')[0]).removesuffix('.py')
    workdir = os.path.join(cache_root(), f'{name}-{digest.hexdigest()[:12]}')
    os.makedirs(cache_root(), exist_ok=True)
    # One trainer per cache entry, even across concurrent runs (parallel tests, sweeps). In a
    # multi-process run the training is collective: process 0 holds the lock and decides, the
    # others follow its answer (a lock of their own would wait on a collective forever).
    primary = jax.process_index() == 0
    with open(workdir + '.lock', 'w') if primary else contextlib.nullcontext() as lock:
        if primary:
            fcntl.flock(lock, fcntl.LOCK_EX)
        done = os.path.exists(os.path.join(workdir, 'summary.json'))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
            done = bool(multihost_utils.broadcast_one_to_all(np.int32(done)))
        if not done:
            logging.info('config.%s=%r: training it once into %s', key, spec, workdir)
            with jax.set_mesh(common.make_mesh(config)):
                loop.train(config, workdir, trainers.get_builder(config.algo))
    return workdir


def load_params(path: str, abstract_params, *, key: str = 'init_from'):
    """Params of the latest checkpoint in workdir `path`, restored onto `abstract_params`.

    `abstract_params` may be a sub-tree of what was saved (a reward model's backbone from a
    policy checkpoint: the policy's output head is simply not read). Shapes must match.
    """
    ckpt = ckpt_lib.Checkpointer(os.path.join(path, 'checkpoints'), save_every=1, keep=1)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f'config.{key}={path!r}: no complete checkpoint there')
    try:
        try:
            params = ckpt.restore_params(step, abstract_params)
        except KeyError:  # a PPO run saves ActorCritic(policy, critic): start from its policy
            params = ckpt.restore_params(step, {'policy': abstract_params})['policy']
    except (KeyError, ValueError) as e:
        raise ValueError(f'config.{key}={path!r}: its parameters do not fit this model ({e})') \
            from e
    finally:
        ckpt.close()
    logging.info('Loaded parameters from %s (step %d)', path, step)
    return params


def run_config(spec: str, *, key: str, algo: str):
    """(workdir, its resolved config) of a finished `algo` run named by a starting-point spec."""
    import ml_collections  # pylint: disable=g-import-not-at-top
    path = resolve(spec, key=key)
    with open(os.path.join(path, 'config.json')) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.algo != algo:
        raise ValueError(f'config.{key}={spec!r} is a {config.algo!r} run, not {algo!r}')
    config.mesh.rules = None
    return path, config


def init_module(module: nnx.Module, spec: str, *, key: str = 'init_from') -> None:
    """Overwrites `module`'s parameters in place from a starting-point spec (no-op for '')."""
    if not spec:
        return
    start = specs.Start.parse(spec)
    if start.kind == 'hf':
        hf.load_into(module, start.value, key=key)
        logging.info('Loaded parameters from Hugging Face checkpoint %s', start.value)
        return
    state = nnx.state(module)
    abstract = ckpt_lib.abstract_like(nnx.to_pure_dict(state))
    params = load_params(resolve(spec, key=key), abstract, key=key)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(module, state)
