"""What every trainer builds from its config: the model config, the mesh and its rules, the
optimizer and its schedule, and the policy created sharded.

Trainers (and `validation`, `memory_plan`, `repro/`) call these; `alignjax.experiment_lib` keeps
what experiment files call.
"""

from __future__ import annotations

import dataclasses
import json
import os

from flax import nnx
import jax
import ml_collections
import optax

from alignjax import sharding
from alignjax import pretrained
from alignjax.models import Decoder, lora, transformer
from alignjax.models import config as model_config


def model_config_from(c: ml_collections.ConfigDict) -> model_config.ModelConfig:
    fields = {k: v for k, v in c.to_dict().items() if k != 'preset'}
    for key in ('rope_scaling', 'rope_local_scaling'):
        if isinstance(fields.get(key), dict) and not fields[key]:
            fields[key] = None
    known = {f.name for f in dataclasses.fields(model_config.ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f'Unknown config.model field(s) {unknown}')
    return model_config.ModelConfig(**fields)


def model_config_of(c: ml_collections.ConfigDict, model=None) -> model_config.ModelConfig:
    """The ModelConfig of a run's trainable models: config.model (or `model`, a model section of
    another run's config) with config.lora's adapters."""
    cfg = model_config_from(c.model if model is None else model)
    lora = c.get('lora')
    if lora is None or not lora.rank:
        return cfg
    return cfg.replace(lora_rank=lora.rank, lora_alpha=lora.alpha, lora_targets=tuple(lora.targets),
                       lora_dropout=lora.get('dropout', 0.0))


def uses_lora(c: ml_collections.ConfigDict) -> bool:
    return bool(c.get('lora') and c.lora.rank)


def quantized(c: ml_collections.ConfigDict) -> bool:
    """Whether the policy's frozen base is stored int8 (config.lora.quantize; needs adapters)."""
    if not (c.get('lora') and c.lora.get('quantize')):
        return False
    if not c.lora.rank:
        raise ValueError("config.lora.quantize='int8' quantises a frozen base: it needs "
                         'adapters (config.lora.rank > 0)')
    return True


def make_mesh(c: ml_collections.ConfigDict):
    return sharding.make_mesh(tuple(c.mesh.shape))


def mesh_rules(c: ml_collections.ConfigDict):
    return sharding.rules_from_config(c.mesh.rules)


def make_schedule(o: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up to `lr`, then cosine / linear decay to `lr * end_lr_factor`, or constant."""
    warmup = min(o.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = o.lr * o.end_lr_factor
    if o.schedule == 'cosine':
        decay = optax.cosine_decay_schedule(o.lr, decay_steps, alpha=o.end_lr_factor)
    elif o.schedule == 'linear':
        decay = optax.linear_schedule(o.lr, end, decay_steps)
    elif o.schedule == 'constant':
        decay = optax.constant_schedule(o.lr)
    else:
        raise ValueError(f'config.optim.schedule must be cosine, linear or constant, '
                         f'got {o.schedule!r}')
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), decay], [warmup])


def make_optimizer(o: ml_collections.ConfigDict, total_steps: int):
    """AdamW with the schedule and optional global-norm clipping; returns (tx, schedule)."""
    schedule = make_schedule(o, total_steps)
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
    return optax.chain(*parts), schedule


def build_policy(c: ml_collections.ConfigDict, mesh, *, seed_offset: int = 0):
    """The policy Decoder of config.model (with config.lora's adapters), created already sharded
    from config.seed."""
    cfg = model_config_of(c)
    return sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(c.seed + seed_offset)), mesh,
                                   mesh_rules(c))


def trainable(c: ml_collections.ConfigDict):
    """`loop.Algorithm.trainable` of a run: the adapters and heads with config.lora, else all."""
    return lora.TRAINABLE if uses_lora(c) else None


def policy_and_reference(c: ml_collections.ConfigDict, mesh):
    """The policy from config.init_from and its frozen reference from config.reference_from (''
    -> init_from). With config.lora the reference is the policy with its adapters off (its base
    arrays, not a copy), unless reference_from names another start."""
    policy = build_policy(c, mesh)
    pretrained.init_module(policy, c.init_from)
    if quantized(c):  # the frozen base stored int8, from its full-precision load
        policy = transformer.quantized_model(policy)
    if uses_lora(c) and not c.reference_from:
        return policy, transformer.base_model(policy)
    reference = build_policy(c, mesh)
    if uses_lora(c):  # a reference of another start: a plain model
        reference = transformer.base_model(reference)
    pretrained.init_module(reference, c.reference_from or c.init_from,
                           key='reference_from' if c.reference_from else 'init_from')
    return policy, reference


def write_config(c: ml_collections.ConfigDict, workdir: str) -> None:
    """DIR/config.json: the resolved config (written by the primary process only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'config.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(c.to_dict(), f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
