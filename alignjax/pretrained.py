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

import jax
import ml_collections
from absl import logging
from flax import nnx

from alignjax import checkpoint as ckpt_lib
from alignjax import experiment_lib
from alignjax import specs
from alignjax.interop import hf
from alignjax.interop import peft
from alignjax.models import lora, transformer

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
    """Overwrites `module`'s parameters in place from a starting-point spec (no-op for '').

    Only the base parameters (`nnx.Param`) are written: an adapted module's own adapters keep
    their initialisation (B = 0), so it starts equal to the starting point. A starting point that
    carries adapters itself, the workdir of an adapted run (config.lora.rank > 0, whose
    checkpoints hold only what trained: its adapters and heads), is the model it trained: its
    own starting point with its adapters folded in (W + scale A B) and its heads.
    """
    if not spec:
        return
    start = specs.Start.parse(spec)
    if start.kind == 'hf':
        hf.load_into(module, start.value, key=key)
        logging.info('Loaded parameters from Hugging Face checkpoint %s', start.value)
        return
    if start.kind == 'peft':
        _init_from_peft(module, start.value, key=key)
        return
    path = resolve(spec, key=key)
    source = _run_config(path)
    if source is None or not source.get('lora', {}).get('rank', 0):
        _restore(module, path, key)
        return
    base_key = 'backbone_from' if source['algo'] in ('reward_model',
                                                     'preference_model') else 'init_from'
    if not source.get(base_key):
        raise ValueError(f'config.{key}={spec!r} trained adapters on a from-scratch base, which '
                         f'its checkpoints do not hold: nothing to start from')
    init_module(module, source[base_key], key=f'{key} (its {base_key})')
    lora_of = source['lora']

    def from_checkpoint(twin_state):
        # Adapters and heads are small: read replicated on the module's mesh, then folded in.
        mesh = jax.tree.leaves(nnx.state(module, nnx.Param))[0].sharding.mesh
        on_mesh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        trained = nnx.to_pure_dict(nnx.state(twin_state, lora.TRAINABLE))
        return load_params(
            path,
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_mesh),
                         trained), key=key)

    _fold_adapters(module, lora_of['rank'], lora_of['alpha'], lora_of['targets'], from_checkpoint)


def _init_from_peft(module: nnx.Module, directory: str, *, key: str) -> None:
    """A PEFT LoRA adapter on its base (adapter_config.json's base_model_name_or_path, a local
    Hugging Face directory), folded into `module`'s base parameters."""
    config = peft.read_config(directory, key=key)
    base = config.get('base_model_name_or_path') or ''
    if not os.path.isfile(os.path.join(base, 'config.json')):
        raise FileNotFoundError(f'config.{key}=peft:{directory}: its base_model_name_or_path '
                                f'{base!r} is not a local Hugging Face checkpoint directory')
    init_module(module, f'hf:{base}', key=key)
    _fold_adapters(module, config['r'], float(config['lora_alpha']), config['alignjax_targets'],
                   lambda twin: peft.read_adapters(twin, directory, key=key))
    logging.info('Loaded the PEFT adapter %s on %s (folded into the base)', directory, base)


def _fold_adapters(module: nnx.Module, rank: int, alpha: float, targets, read) -> None:
    """Folds adapters into `module`'s base parameters in place (W + scale A B): `read(twin)`
    gives the pure-dict values (adapters, and heads if any) for the abstract `twin`, a model of
    `module`'s class adapted with (rank, alpha, targets)."""
    adapted = transformer.config_of(module).replace(lora_rank=rank, lora_alpha=alpha,
                                                    lora_targets=tuple(targets))
    graphdef, abstract = transformer.twin(module, adapted)
    values = _deep_update(nnx.to_pure_dict(nnx.state(module, nnx.Param)),
                          read(nnx.merge(graphdef, abstract)))
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, lora.merged_params(nnx.merge(graphdef, values)))
    nnx.update(module, state)


def _deep_update(into: dict, values: dict) -> dict:
    for k, v in values.items():
        into[k] = _deep_update(into.get(k, {}), v) if isinstance(v, dict) else v
    return into


def _run_config(path: str) -> dict | None:
    config_json = os.path.join(path, 'config.json')
    if not os.path.exists(config_json):
        return None
    with open(config_json) as f:
        return json.load(f)


def _restore(module: nnx.Module, path: str, key: str) -> None:
    """`module`'s base parameters from workdir `path`'s latest checkpoint."""
    state = nnx.state(module, nnx.Param)
    abstract = ckpt_lib.abstract_like(nnx.to_pure_dict(state))
    params = load_params(path, abstract, key=key)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(module, state)
