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

This module only reads starting points. Training a missing `experiment:` entry is a whole run,
so it is done from above the trainers, by `alignjax.runs` before a run builds its models.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_collections
from absl import logging
from flax import nnx

from alignjax import checkpoint as ckpt_lib
from alignjax import experiment_lib
from alignjax import specs
from alignjax.interop import hf

REPO_ROOT = experiment_lib.REPO_ROOT

# The version of the checkpoint layout (2: scanned layers stored stacked); part of the cache key.
CHECKPOINT_LAYOUT = 2


def cache_root() -> str:
    return os.environ.get('ALIGNJAX_CACHE', os.path.expanduser('~/.cache/alignjax'))


def cache_entry(spec: str) -> tuple[str, ml_collections.ConfigDict]:
    """(cache workdir, resolved config) of an `experiment:` spec; nothing is trained or written.

    The cache key leaves out the mesh (sharding changes how, not what, is computed).
    """
    exp = experiment_lib.experiment_path(specs.Start.parse(spec).value)
    config = experiment_lib.load_config(exp)
    fields = {k: v for k, v in config.to_dict().items() if k not in ('mesh', 'allow_config_change')}
    # Entries written before scanned layers were stored stacked hold the same config.
    fields['layout'] = CHECKPOINT_LAYOUT
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    name = os.path.basename(exp.split(':')[0]).removesuffix('.py')
    return os.path.join(cache_root(), f'{name}-{digest.hexdigest()[:12]}'), config


def is_trained(workdir: str) -> bool:
    """Whether a cache entry's run has finished (its summary.json is written last)."""
    return os.path.exists(os.path.join(workdir, 'summary.json'))


def resolve(spec: str, *, key: str = 'init_from') -> str:
    """The workdir behind a starting-point spec (a workdir, or a trained `experiment:` entry)."""
    if specs.Start.parse(spec).kind != 'experiment':
        if not os.path.isdir(os.path.join(spec, 'checkpoints')):
            raise FileNotFoundError(f'config.{key}={spec!r}: no checkpoints/ directory there')
        return spec
    workdir, _ = cache_entry(spec)
    if not is_trained(workdir):
        raise FileNotFoundError(f'config.{key}={spec!r}: not trained yet (alignjax.runs.train '
                                f'trains experiment: starting points before a run builds)')
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
