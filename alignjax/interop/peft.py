"""PEFT adapter directories: an adapted Decoder's adapters out, and a PEFT LoRA adapter in.

A PEFT LoRA directory is `adapter_config.json` (r, lora_alpha, target_modules, ...) and
`adapter_model.safetensors`, one pair of tensors per adapted Linear of the transformers model:
`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` [r, in] and `...lora_B.weight`
[out, r] (and `base_model.model.lm_head.lora_A.weight` for the output head), the update being
(lora_alpha / r) B A x. alignjax's adapters (`models/lora.py`) are the
same matrices in the projections' own layouts: A [*in, r] is lora_A transposed with its input
axes unflattened, B [r, *out] is lora_B transposed with its output axes unflattened, in the
order `interop.hf` flattens the weights (heads major). `peft.PeftModel.from_pretrained` loads
what `save_peft` writes onto the transformers model `save_hf` writes of the base, and `load_peft`
reads a directory peft wrote (plain LoRA: no DoRA, rsLoRA, biases or `modules_to_save`).

peft itself is a test oracle, never imported here.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from flax import nnx

from alignjax import sharding as sharding_lib
from alignjax.interop import safetensors_io
from alignjax.models import lora
from alignjax.models.transformer import LAYERS, Decoder

# alignjax adapter (block part, name) -> the transformers module it adapts, after
# `model.layers.{i}.`.
_MODULES = {
    **{('attn', f'{x}_lora'): f'self_attn.{x}_proj' for x in 'qkvo'},
    **{('mlp', f'{x}_lora'): f'mlp.{x}_proj' for x in ('gate', 'up', 'down')},
}
_TARGETS = {
    **{
        name.split('_')[0]: module.split('.')[-1] for (_, name), module in _MODULES.items()
    }, 'lm_head': 'lm_head'
}
PREFIX = 'base_model.model'
CONFIG = 'adapter_config.json'
WEIGHTS = 'adapter_model'


def _adapters(model: Decoder):
    """(module, entry, at, A [*in, r], B [r, *out]) of every adapter, one layer at a time
    (stacked layers split): `module` the transformers module it adapts, `entry` its path in the
    adapter state and `at` its layer's index in a stacked array (() when not stacked)."""
    pairs = {}
    for path, var in nnx.state(model, lora.LoRAParam).flat_state():
        *where, which = tuple(path)
        pairs.setdefault(tuple(where), {})[which] = var.get_value()
    out = []
    for where, ab in sorted(pairs.items(), key=str):
        if where == ('lm_head_lora',):
            out.append(('lm_head', where, (), ab['a'], ab['b']))
        elif where[0] != LAYERS:
            raise ValueError(f'adapter {"/".join(map(str, where))} has no transformers module')
        elif isinstance(where[1], int):  # unrolled: ('layers', i, part, name)
            out.append((_module(*where[1:]), where, (), ab['a'], ab['b']))
        else:  # stacked: ('layers', part, name), [L, ...]
            out += [(_module(i, *where[1:]), where, (i,), _layer(ab['a'], i), _layer(ab['b'], i))
                    for i in range(ab['a'].shape[0])]
    return out


def _layer(x, i: int):
    """Layer i of a stacked array (of an abstract one: its shape)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    return x[i]


def _module(layer: int, part: str, adapter: str) -> str:
    return f'model.layers.{layer}.{_MODULES[(part, adapter)]}'


def _name(module: str, which: str) -> str:
    return f'{PREFIX}.{module}.lora_{which}.weight'


def save_peft(model: Decoder, directory: str, *, base_model_name_or_path: str = '') -> None:
    """Writes `model`'s adapters as a PEFT LoRA directory (adapter_config.json and
    adapter_model.safetensors), float32. `base_model_name_or_path`: the transformers checkpoint
    of the base (what `save_hf` wrote of `transformer.base_model(model)`)."""
    cfg = model.cfg
    if not cfg.lora_rank:
        raise ValueError('save_peft: the model has no adapters (model.lora_rank is 0)')
    config = {
        'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': cfg.lora_rank,
        'lora_alpha': cfg.lora_alpha, 'target_modules': sorted(_TARGETS[t] for t in cfg.lora_targets
                                                              ), 'lora_dropout': cfg.lora_dropout,
        'bias': 'none', 'fan_in_fan_out': False, 'use_rslora': False, 'use_dora': False,
        'init_lora_weights': True, 'modules_to_save': None,
        'base_model_name_or_path': base_model_name_or_path, 'inference_mode': True
    }
    tensors = []
    for module, _, _, a, b in _adapters(model):
        rank = a.shape[-1]
        a_t = lambda a=a, r=rank: np.asarray(sharding_lib.to_global_host(a), np.float32).reshape(
            -1, r).T
        b_t = lambda b=b, r=rank: np.asarray(sharding_lib.to_global_host(b), np.float32).reshape(
            r, -1).T
        tensors.append((_name(module,
                              'A'), (rank, math.prod(a.shape[:-1])), np.dtype(np.float32), a_t))
        tensors.append((_name(module,
                              'B'), (math.prod(b.shape[1:]), rank), np.dtype(np.float32), b_t))
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG), 'w') as f:
            json.dump(config, f, indent=2, sort_keys=True)
    safetensors_io.write(
        os.path.join(directory, f'{WEIGHTS}.safetensors') if writer else None, tensors)


def read_config(directory: str, *, key: str = 'init_from') -> dict:
    """adapter_config.json of a PEFT LoRA directory, checked: what alignjax can read of it."""
    path = os.path.join(directory, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config.{key}=peft:{directory}: no {CONFIG} there')
    with open(path) as f:
        config = json.load(f)
    if config.get('peft_type') != 'LORA':
        raise ValueError(f'{path}: peft_type {config.get("peft_type")!r}, not LORA')
    unsupported = [k for k in ('use_dora', 'use_rslora', 'fan_in_fan_out') if config.get(k)]
    if config.get('bias', 'none') != 'none' or config.get('modules_to_save'):
        unsupported.append('bias' if config.get('bias', 'none') != 'none' else 'modules_to_save')
    if unsupported:
        raise ValueError(f'{path}: {", ".join(unsupported)} are not supported (plain LoRA only)')
    modules = config.get('target_modules')
    if isinstance(modules, str) or not modules:
        raise ValueError(f'{path}: target_modules must be a list of module names, got '
                         f'{modules!r}')
    by_module = {v: k for k, v in _TARGETS.items()}
    unknown = sorted(set(modules) - set(by_module))
    if unknown:
        raise ValueError(f'{path}: target_modules {unknown} have no alignjax adapter (known: '
                         f'{sorted(by_module)})')
    config['alignjax_targets'] = tuple(sorted(by_module[m] for m in modules))
    return config


def read_adapters(model: Decoder, directory: str, *, key: str = 'init_from') -> dict:
    """A PEFT LoRA directory's adapters as a pure dict (float32 NumPy) of `model`'s adapter
    state; `model` (concrete or abstract) must be adapted with the same rank, alpha and targets."""
    config = read_config(directory, key=key)
    cfg = model.cfg
    ours = (cfg.lora_rank, float(cfg.lora_alpha), tuple(sorted(cfg.lora_targets)))
    if (config['r'], float(config['lora_alpha']), config['alignjax_targets']) != ours:
        raise ValueError(f'config.{key}=peft:{directory}: r={config["r"]}, '
                         f'lora_alpha={config["lora_alpha"]}, targets '
                         f'{config["alignjax_targets"]} differ from the model\'s adapters {ours}')
    ckpt = safetensors_io.Checkpoint(directory, WEIGHTS)
    values = jax.tree.map(lambda x: np.zeros(x.shape, np.float32),
                          nnx.to_pure_dict(nnx.state(model, lora.LoRAParam)))
    for module, where, at, a, b in _adapters(model):
        entry = values
        for key in where:
            entry = entry[key]
        entry['a'][at] = ckpt.read(_name(module, 'A')).T.reshape(a.shape)
        entry['b'][at] = ckpt.read(_name(module, 'B')).T.reshape(b.shape)
    return values


def load_peft(model: Decoder, directory: str, *, key: str = 'init_from') -> None:
    """Reads a PEFT LoRA directory's adapters into `model`'s (same rank, alpha and targets)."""
    values = read_adapters(model, directory, key=key)
    state = nnx.state(model, lora.LoRAParam)
    put = lambda x, old: jax.device_put(x, old.sharding)
    nnx.replace_by_pure_dict(state, jax.tree.map(put, values, nnx.to_pure_dict(state)))
    nnx.update(model, state)
