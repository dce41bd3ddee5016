"""A memory plan before step 1: every program of a run, compiled ahead of time for a target.

`plan(config, target)` builds every model of the run abstractly (`nnx.eval_shape` and
`sharding.state_shardings` over a mesh of the target's devices: nothing is allocated), lowers the
jitted programs the trainer runs with `jax.ShapeDtypeStruct` arguments that carry their shardings,
compiles them for the target and reads the compiler's own per-device memory:

- the update: `loop.make_update` with the algorithm's own loss and batch layout, the optimizer of
  `common.make_optimizer`, the frozen models as arguments, the state donated;
- online algorithms also the rollout: the sampler (`sampling.generate`: the prefill and the
  decode loop with its KV cache), Nash-MD's opponent sampler (the geometric mixture of policy and
  reference), the teacher-forced pass of policy, reference (and critic) over the samples, and the
  reward or preference model's scoring pass when the run has one.

Targets: a TPU topology name (`v5e:8x8`, `v5p:4x4x4`, `v6e:16x16`; needs `libtpu`, see
benchmarks/setup_tpu_venv.sh), `cpu:N` (N simulated host devices, with
`--xla_force_host_platform_device_count`), or `local` (this process's devices).

Per program and per device: arguments, outputs, aliased (outputs written into donated argument
buffers), temporaries, and total = arguments + outputs + temporaries - aliased, the memory live
at once; the compile time; the largest buffers of the compiled (partitioned) program. A program
the TPU compiler refuses (RESOURCE_EXHAUSTED) is kept as a refused row; `check_fits` turns it, or
a total over the HBM, into one line naming the largest buffers and what to change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from alignjax import experiment_lib
from alignjax import resharding
from alignjax import sampling
from alignjax import sharding
from alignjax import rewards
from alignjax.data import inputs
from alignjax.data import pipeline
from alignjax.losses import reward as reward_losses
from alignjax.models import Decoder, PreferenceModel, RewardModel, ValueModel, lora, scoring
from alignjax.models import config as model_config
from alignjax.trainers import common
from alignjax.trainers import dpo, loop, policy_gradient, precision, sft

GiB = 1 << 30
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'experiments')
# HBM per chip (per device) by target generation; `check_fits` compares against these.
HBM_BYTES = {
    'v4': 32 * GiB, 'v5e': 16 * GiB, 'v5litepod': 16 * GiB, 'v5p': 95 * GiB, 'v6e': 32 * GiB,
    'h100': 80 * GiB, 'h200': 141 * GiB
}
ALGOS = ('sft', 'dpo', 'ppo', 'remax', 'rloo', 'grpo', 'nash_md')
ONLINE = ('ppo', 'remax', 'rloo', 'grpo', 'nash_md')

# ------------------------------------------------------------------------------------ targets


def target_devices(target: str) -> list:
    """The devices of `target`: a TPU topology name, 'cpu:N' or 'local'."""
    if target == 'local':
        return jax.devices()
    if target.startswith('cpu:'):
        n = int(target[4:])
        devices = jax.devices('cpu')
        if len(devices) < n:
            raise ValueError(f'target {target}: this process has {len(devices)} CPU devices; set '
                             f'XLA_FLAGS=--xla_force_host_platform_device_count={n} before jax '
                             'is imported')
        return devices[:n]
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    try:
        # A single chip ('v5e:1x1', Colab's) is a host of one chip.
        one = target.endswith(':1x1') or target.endswith(':1x1x1')
        kw = dict(chips_per_host_bounds=(1, 1, 1)) if one else {}
        return list(
            topologies.get_topology_desc(platform='tpu', topology_name=target, **kw).devices)
    except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f'target {target!r}: no TPU topology of that name here ({e}); compiling '
                         'for TPU needs libtpu: run under the venv of '
                         'benchmarks/setup_tpu_venv.sh') from e


def hbm_bytes(target: str) -> int | None:
    """HBM of one device of `target` (None when unknown: CPU targets)."""
    name = target.split(':')[0].lower()
    if name == 'local':
        stats = jax.devices()[0].memory_stats() or {}
        if 'bytes_limit' in stats:
            return int(stats['bytes_limit'])
        name = jax.devices()[0].device_kind.lower()
    for key, value in HBM_BYTES.items():
        if name.startswith(key) or f' {key}' in name:
            return value
    return None


# ------------------------------------------------------------------------------------ configs


def _model_dict(model, **overrides) -> ml_collections.ConfigDict:
    if isinstance(model, str):
        return experiment_lib.model_config_dict(model, **overrides)
    cfg = model.replace(**overrides)
    fields = dataclasses.asdict(cfg)
    for key in ('rope_scaling', 'rope_local_scaling'):
        if fields[key] is not None:
            fields[key] = dict(fields[key])
    return ml_collections.ConfigDict({'preset': 'custom', **fields}, type_safe=False)


def plan_config(algo: str, model: str | model_config.ModelConfig = 'tiny', *, batch: int,
                prompt_len: int, response_len: int, group: int | None = None, mesh_shape=(1, -1, 1),
                layers: int | None = None, exp_args: str = '',
                overrides=()) -> ml_collections.ConfigDict:
    """The config `main` would run for `experiments/<algo>.py[:exp_args]`, with the model (a
    preset name or a ModelConfig), the batch (pairs or prompts a step), the lengths, the group
    (samples per prompt), the mesh, and 'key=value' `overrides` (e.g. 'optim.microbatches=4',
    'model.remat=False') swapped in."""
    if algo not in ALGOS:
        raise ValueError(f'memory plan: algo {algo!r} is not one of {ALGOS}')
    config = experiment_lib.load_config(
        os.path.join(EXPERIMENTS, f'{algo}.py') + (f':{exp_args}' if exp_args else ''))
    with config.unlocked():
        config.model = _model_dict(model, **({'num_layers': layers} if layers else {}))
        config.data.batch_size = batch
        config.data.max_prompt_len = prompt_len
        config.data.max_response_len = response_len
        config.mesh.shape = tuple(mesh_shape)
        if algo in ONLINE:
            config.rl.max_new_tokens = response_len
            if group:
                config.rl.samples_per_prompt = group
    for item in overrides:
        experiment_lib.apply_override(config, item, 'memory plan override')
    return config


# ------------------------------------------------------------------------------------ programs


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree,
                        shardings)


def abstract_module(ctor, mesh, rules, *, trainable: bool = False):
    """(graphdef, pure dict of sharded ShapeDtypeStructs) of `ctor()`, nothing allocated; with
    `trainable`, (graphdef, what trains, the frozen base) of an adapted model (`lora.TRAINABLE`)."""
    module = nnx.eval_shape(ctor)
    parts = (lora.TRAINABLE, ...) if trainable else ()
    graphdef, *states = nnx.split(module, *parts)
    abstract = lambda state: _with_shardings(
        nnx.to_pure_dict(state), nnx.to_pure_dict(sharding.state_shardings(state, mesh, rules)))
    return (graphdef, *map(abstract, states))


def _batch(layout: dict, mesh) -> dict:
    """Sharded ShapeDtypeStructs of a batch {name: (shape, dtype)}: rows over the batch axes."""
    return {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
        for k, (shape, dtype) in layout.items()
    }


def _tokenized_layout(config, kind: str, rows: int) -> dict:
    """The batch layout of `kind` records as the data pipeline tokenizes them, for `rows` rows."""
    d = config.data
    tokenize = pipeline.make_tokenize_fn(kind, inputs.make_tokenizer(config),
                                         max_prompt_len=d.max_prompt_len,
                                         max_response_len=d.max_response_len,
                                         prompt_truncation=inputs.prompt_truncation(d))
    record = {'prompt': 'p', 'response': 'r', 'chosen': 'c', 'rejected': 'r'}
    row = tokenize(record, 0)
    if kind == 'preference':
        row['index'] = np.int32(0)  # inputs.make_stream(with_index=True)
    return {k: ((rows, *np.shape(v)), np.asarray(v).dtype) for k, v in row.items()}


def _online_layout(config, rows: int) -> dict:
    """The update's batch of an online trainer (policy_gradient.build / nash.build)."""
    p, r = config.data.max_prompt_len, config.rl.max_new_tokens
    layout = {
        'prompt': ((rows, p), np.int32), 'prompt_mask': ((rows, p), np.int32),
        'response': ((rows, r), np.int32), 'response_mask': ((rows, r), np.int32), 'old_logp': (
            (rows, r), np.float32), 'ref_logp': ((rows, r), np.float32), 'advantages': (
                (rows, r), np.float32)
    }
    assert set(policy_gradient.TRAIN_KEYS) <= set(layout)
    if config.algo != 'nash_md':
        layout['kl_coef'] = ((rows,), np.float32)
    if config.algo == 'ppo':
        layout['old_values'] = layout['returns'] = ((rows, r), np.float32)
    return layout


def _update_program(config, mesh, rules, cfg):
    """(jitted update, its abstract arguments), as `loop.setup` builds them."""
    algo, seed = config.algo, config.seed
    policy_ctor = lambda: Decoder(cfg, rngs=nnx.Rngs(seed))
    frozen_ctors, epochs, minibatches, algo_state = {}, 1, 1, {}
    if algo == 'sft':
        loss_fn = sft.sft_loss_fn
        layout = _tokenized_layout(config, 'sft', config.data.batch_size)
    elif algo == 'dpo':
        loss_fn = dpo.make_loss_fn(config.loss)
        layout = _tokenized_layout(config, 'preference', config.data.batch_size)
        if config.loss.precompute_ref:
            rows = config.data.batch_size
            layout.update(ref_chosen_logps=((rows,), np.float32),
                          ref_rejected_logps=((rows,), np.float32))
        elif dpo.uses_reference(config.loss):
            frozen_ctors['reference'] = policy_ctor
    else:
        rl = config.rl
        loss_fn = policy_gradient.make_loss_fn(config)
        epochs, minibatches = rl.epochs, rl.minibatches
        layout = _online_layout(config, config.data.batch_size * rl.samples_per_prompt)
        if algo != 'nash_md':
            algo_state = {'kl_coef': jax.ShapeDtypeStruct((), jnp.float32)}
    model_ctor = policy_ctor
    if algo == 'ppo':
        model_ctor = lambda: policy_gradient.ActorCritic(Decoder(cfg, rngs=nnx.Rngs(seed)),
                                                         ValueModel(cfg, rngs=nnx.Rngs(seed + 17)))
    frozen_defs, frozen_states, views = {}, {}, {}
    if common.uses_lora(config):  # adapters train; the base is frozen, the reference its view
        graphdef, params, frozen_states[loop.BASE] = abstract_module(model_ctor, mesh, rules,
                                                                     trainable=True)
        plain = lambda: Decoder(cfg.replace(lora_rank=0), rngs=nnx.Rngs(seed))
        for name in frozen_ctors:  # the reference: the policy with its adapters off
            frozen_defs[name] = nnx.graphdef(nnx.eval_shape(plain))
            views[name] = ('policy',) if algo == 'ppo' else ()
        frozen_ctors = {}
    else:
        graphdef, params = abstract_module(model_ctor, mesh, rules)
    for name, ctor in frozen_ctors.items():
        frozen_defs[name], frozen_states[name] = abstract_module(ctor, mesh, rules)
    tx, schedule = common.make_optimizer(config.optim, config.total_steps * epochs * minibatches)
    if precision.needs_master(params):  # loop.setup's float32 master copy
        tx = precision.float32_master(tx)
    rep = sharding.replicated(mesh)
    shardings = loop.state_shardings(params, tx, algo_state, mesh)
    shardings['nonfinite_skipped'] = rep
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=rep)
    key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    state = {
        'params': params,
        'opt_state': _with_shardings(jax.eval_shape(tx.init, params), shardings['opt_state']),
        'step': scalar(jnp.int32),
        'rng': jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep),
        'nonfinite_skipped': scalar(jnp.int32),
        'algo': {k: scalar(v.dtype) for k, v in algo_state.items()},
    }
    if loop.BASE in frozen_states:
        shardings['base_digest'] = rep
        leaves = len(jax.tree.leaves(frozen_states[loop.BASE]))  # loop.base_digest's shape
        state['base_digest'] = jax.ShapeDtypeStruct((leaves,), jnp.float32, sharding=rep)
    update = loop.make_update(graphdef, frozen_defs, loss_fn, tx, schedule,
                              config.optim.microbatches, shardings, mesh, epochs=epochs,
                              minibatches=minibatches,
                              skip_nonfinite=config.get('nonfinite',
                                                        'stop') == 'skip', base_views=views)
    return update, (state, frozen_states, _batch(layout, mesh))


def _sampler_program(config, mesh, rules, ctors, combine=None):
    """`sampling.generate` of the rollout (prefill and decode loop) over its rows."""
    rl, tok = config.rl, inputs.make_tokenizer(config)
    gen = resharding.GenerationSharding.from_spec(rl.generation_sharding, mesh, rules)
    gen_mesh = mesh if gen is None else gen.mesh
    defs, states = zip(*(abstract_module(c, gen_mesh, rules) for c in ctors))
    scfg = sampling.SamplingConfig(  # as rollout.Rollout builds it
        max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_k=rl.top_k,
        top_p=rl.top_p, eos_id=tok.eos_id, pad_id=tok.pad_id, prompt_bucket=8)
    rows, p = config.data.batch_size * rl.samples_per_prompt, config.data.max_prompt_len

    def run(states, prompt, prompt_mask, key):
        models = [nnx.merge(g, s) for g, s in zip(defs, states)]
        return sampling.generate(models, prompt, prompt_mask, key, scfg, combine)

    batch = _batch({'p': ((rows, p), np.int32), 'm': ((rows, p), np.int32)}, gen_mesh)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(gen_mesh))
    return jax.jit(run), (list(states), batch['p'], batch['m'], key)


def _rollout_programs(config, mesh, rules, cfg):
    """[(name, jitted program, abstract args)] of an online trainer's rollout."""
    algo, rl, seed = config.algo, config.rl, config.seed
    rows, k = config.data.batch_size * rl.samples_per_prompt, rl.samples_per_prompt
    policy = lambda: Decoder(cfg, rngs=nnx.Rngs(seed))
    out = [('sampler', *_sampler_program(config, mesh, rules, [policy]))]
    if algo == 'nash_md':
        mix = sampling.geometric_mixture(float(config.nash.mixture))
        out.append(('sampler: opponent (mixture)',
                    *_sampler_program(config, mesh, rules, [policy, policy], mix)))
    layout = _online_layout(config, rows)
    batch = _batch({n: layout[n] for n in ('prompt', 'prompt_mask', 'response', 'response_mask')},
                   mesh)
    pdef, pstate = abstract_module(policy, mesh, rules)
    cdef, cstate = (abstract_module(lambda: ValueModel(cfg, rngs=nnx.Rngs(seed + 17)), mesh, rules)
                    if algo == 'ppo' else (None, None))

    def teacher_forced(policy_state, ref_state, critic_state, batch):  # rollout._teacher_forced
        args = (batch['prompt'], batch['prompt_mask'], batch['response'], batch['response_mask'])
        out = {
            'old_logp': scoring.rows_response_logprobs(nnx.merge(pdef, policy_state), *args,
                                                       group=k),
            'ref_logp': scoring.rows_response_logprobs(nnx.merge(pdef, ref_state), *args, group=k)
        }
        if cdef is not None:
            out['old_values'] = scoring.response_values(nnx.merge(cdef, critic_state), *args)
        return out

    name = 'rollout: policy + reference' + (' + critic' if cdef is not None else '')
    out.append((name, jax.jit(teacher_forced), (pstate, pstate, cstate, batch)))
    cat = lambda b: (jnp.concatenate([b['prompt'], b['response']], axis=1),
                     jnp.concatenate([b['prompt_mask'], b['response_mask']], axis=1))
    with_rm = 'reward_model' in {t.kind for t in rewards.parse(config.reward.source)}
    if algo != 'nash_md' and with_rm:
        rdef, rstate = abstract_module(lambda: RewardModel(cfg, rngs=nnx.Rngs(seed)), mesh, rules)
        r = config.reward

        def score(state, batch):  # rollout.RewardModelScorer
            members = nnx.merge(rdef, state)(*cat(batch))
            return reward_losses.aggregate_ensemble(members, method=r.aggregate, lam=r.lam)

        out.append(('rollout: reward model', jax.jit(score), (rstate, batch)))
    if algo == 'nash_md' and config.nash.preference == 'model':
        mdef, mstate = abstract_module(lambda: PreferenceModel(cfg, rngs=nnx.Rngs(seed)), mesh,
                                       rules)

        def prob(state, a, b):  # rollout.ModelPreference
            return jax.nn.sigmoid(nnx.merge(mdef, state)(*cat(a), *cat(b)))

        out.append(('rollout: preference model', jax.jit(prob), (mstate, batch, batch)))
    return out


def programs(config, mesh):
    """[(name, jitted program, abstract args)] of every program `config`'s run compiles."""
    rules = common.mesh_rules(config)
    cfg = common.model_config_of(config)  # with config.lora's adapters (and int8 base)
    if common.quantized(config):
        cfg = cfg.replace(base_quant=config.lora.quantize)
    out = [('update', *_update_program(config, mesh, rules, cfg))]
    if config.algo == 'dpo' and config.loss.precompute_ref:
        rdef, rstate = abstract_module(lambda: Decoder(cfg, rngs=nnx.Rngs(config.seed)), mesh,
                                       rules)
        batch = out[0][2][2]
        batch = {k: v for k, v in batch.items() if not k.startswith('ref_')}
        ref = jax.jit(lambda s, b: dpo.pair_logps(nnx.merge(rdef, s), b)[:2])
        out.append(('reference log-probs', ref, (rstate, batch)))
    if config.algo in ONLINE:
        out.extend(_rollout_programs(config, mesh, rules, cfg))
    return out


# ------------------------------------------------------------------------------------ compiling


@dataclasses.dataclass
class Row:
    """One compiled program's per-device memory (bytes) and compile time."""

    name: str
    argument: int = 0
    output: int = 0
    alias: int = 0
    temp: int = 0
    peak: int = 0  # the compiler's own peak figure where it gives one (TPU), else 0
    compile_s: float = 0.0
    largest: list = dataclasses.field(default_factory=list)  # [(bytes, description)]
    error: str = ''  # the compiler's refusal (RESOURCE_EXHAUSTED), one line

    @property
    def total(self) -> int:
        """Bytes live at once: arguments, temporaries and the outputs not written into donated
        arguments (a refused row: what the refusal names, when it gives a figure)."""
        return self.argument + self.output + self.temp - self.alias


@dataclasses.dataclass
class Report:
    algo: str
    model: str
    target: str
    mesh: tuple
    config: dict
    rows: list

    def table(self) -> str:
        unit, name = (GiB, 'GiB') if max([r.total for r in self.rows] + [0]) >= GiB / 4 else \
            (1 << 20, 'MiB')
        g = lambda b: f'{b / unit:8.2f}'
        lines = [
            f'{self.algo} {self.model} on {self.target}, mesh {self.mesh} ({name} a device)',
            f'{"program":36s} {"args":>8s} {"outputs":>8s} {"aliased":>8s} {"temps":>8s} '
            f'{"total":>8s} {"peak":>8s} {"compile":>8s}'
        ]
        for r in self.rows:
            lines.append(f'{r.name[:36]:36s} {g(r.argument)} {g(r.output)} {g(r.alias)} '
                         f'{g(r.temp)} {g(r.total)} {g(r.peak)} {r.compile_s:7.1f}s'
                         + (f'  REFUSED: {r.error}' if r.error else ''))
            for size, what in r.largest[:3]:
                lines.append(f'    {fmt_bytes(size):>10s}  {what}')
        return '\n'.join(lines)

    def to_json(self) -> str:
        rows = [dict(dataclasses.asdict(r), total=r.total) for r in self.rows]
        return json.dumps({
            'algo': self.algo, 'model': self.model, 'target': self.target, 'mesh': list(self.mesh),
            'config': self.config, 'rows': rows
        })


_BYTES = {
    'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4,
    'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16
}
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]\S*\s+([\w\-]+)\(')
_HEADER = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$')
_CALLED = re.compile(r'(?:calls|to_apply)=%?([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SKIP = {'get-tuple-element', 'bitcast', 'tuple', 'constant', 'copy-done', 'iota'}


def largest_buffers(hlo_text: str, top: int = 8) -> list[tuple[int, str]]:
    """The largest array values of an HLO module's text: [(bytes, 'dtype[dims] opcode op_name')].

    A compiled module is partitioned, so these are per-device shapes. Fusion bodies and reducers
    are skipped (their values live in registers or in the fusion's output); the list is of
    values, not of simultaneously live allocations, so it names suspects rather than a sum.
    """
    called = set(_CALLED.findall(hlo_text))
    seen, out, computation, entry = set(), [], None, False
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            entry, computation = bool(header.group(1)), header.group(2)
            continue
        m = _INSTR.match(line)
        if not m or computation in called:
            continue
        _, dtype, dims, opcode = m.groups()
        if dtype not in _BYTES or opcode in _SKIP or (opcode == 'parameter' and not entry):
            continue
        shape = [int(d) for d in dims.split(',') if d]
        size = int(np.prod(shape, dtype=np.int64)) * _BYTES[dtype]
        op = _OP_NAME.search(line)
        op = op.group(1).replace("\\'", "'") if op else ''
        op = '/'.join(op.split('/')[-3:])[-80:]
        what = f'{dtype}[{dims}] {opcode} {op}'.rstrip()
        if (dtype, dims, op) not in seen:
            seen.add((dtype, dims, op))
            out.append((size, what))
    return sorted(out, key=lambda t: -t[0])[:top]


_REFUSED = re.compile(r'RESOURCE_EXHAUSTED[^\n]*')
_FIGURE = re.compile(r'\(([\d.]+)([KMGT])\)')


def compile_program(name: str, fn, args, top: int = 8) -> Row:
    """Lowers and compiles `fn(*args)`, reading the compiled program's per-device memory."""
    start = time.perf_counter()
    lowered = fn.lower(*args)
    try:
        compiled = lowered.compile()
    except Exception as e:  # pylint: disable=broad-except
        refusal = _REFUSED.search(str(e))
        if refusal is None:
            raise
        row = Row(name, compile_s=time.perf_counter() - start, error=refusal.group(0).strip())
        # The partitioned program does not exist: name the unpartitioned (global) values.
        row.largest = [(b, f'{w} (global shape)')
                       for b, w in largest_buffers(lowered.as_text(dialect='hlo'), top)]
        figures = _FIGURE.findall(row.error)
        if figures:  # "HLO temporaries (17.26G) exceeds available HBM (15.75G)"
            value, unit = figures[0]
            row.temp = int(float(value) * 1024**('KMGT'.index(unit) + 1))
        return row
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    row = Row(name, compile_s=seconds)
    if m is not None:
        row.argument, row.output = m.argument_size_in_bytes, m.output_size_in_bytes
        row.alias, row.temp = m.alias_size_in_bytes, m.temp_size_in_bytes
        row.peak = int(getattr(m, 'peak_memory_in_bytes', 0) or 0)
    row.largest = largest_buffers(compiled.as_text(), top)
    return row


def _rules(config):
    """loop.train's context for activation rules (sharding.use_rules), where the package has it."""
    use_rules = getattr(sharding, 'use_rules', None)
    return contextlib.nullcontext() if use_rules is None else use_rules(config.mesh.get('rules'))


def plan(config, target: str, *, only=None, log=None) -> Report:
    """Compiles every program of `config`'s run for `target` (one at a time); see the module
    docstring. `only`: names of the programs to compile (default all); `log(row)` is called
    after each."""
    mesh = sharding.make_mesh(tuple(config.mesh.shape), devices=target_devices(target))
    rows = []
    # Built outside the mesh context: the optimizer's shardings run tx.init eagerly, which a
    # mesh of devices this process cannot address (a TPU topology's) would refuse.
    with _rules(config):  # batch_sharding reads the rules' batch entry
        built = programs(config, mesh)
    for name, fn, args in built:
        if only is not None and name not in only:
            continue
        with jax.set_mesh(mesh), _rules(config):  # as loop.train traces the update
            rows.append(compile_program(name, fn, args))
            if log is not None:
                log(rows[-1])
    model = config.model.get('preset', 'custom')
    return Report(config.algo, model, target, tuple(mesh.devices.shape), config.to_dict(), rows)


def fmt_bytes(b: int) -> str:
    for unit, name in ((GiB, 'GiB'), (1 << 20, 'MiB'), (1 << 10, 'KiB')):
        if b >= unit:
            return f'{b / unit:.2f} {name}'
    return f'{b} B'


class DoesNotFit(ValueError):
    """A program of the run needs more memory a device than the target has (one line)."""


def check_fits(report: Report, hbm: int | None) -> None:
    """Raises a one-line DoesNotFit (a ValueError) when a program of `report` does not fit `hbm`
    bytes a device (or the compiler refused it), naming its largest buffers and what to change."""
    bad = [r for r in report.rows if r.error or (hbm is not None and r.total > hbm)]
    if not bad:
        return
    worst = max(bad, key=lambda r: (bool(r.error), r.total))
    need = worst.error or (f'{fmt_bytes(worst.total)} a device (arguments '
                           f'{fmt_bytes(worst.argument)}, temporaries {fmt_bytes(worst.temp)})')
    buffers = ', '.join(f'{w} ({fmt_bytes(b)})' for b, w in worst.largest[:3])
    others = [r.name for r in bad if r is not worst]
    c = report.config
    mesh = f"config.mesh.shape (now {tuple(c['mesh']['shape'])})"
    if worst.name == 'update':
        advice = (f"raise config.optim.microbatches (now {c['optim']['microbatches']}), set "
                  f"config.model.remat (now {c['model']['remat']}), or shard more with {mesh}")
    else:
        advice = (f"sample fewer rows a step (config.data.batch_size now {c['data']['batch_size']})"
                  f", shorter sequences, or another {mesh} or config.rl.generation_sharding (now "
                  f"{c['rl']['generation_sharding']!r})")
    hbm_text = fmt_bytes(hbm) if hbm is not None else "the compiler's limit"
    raise DoesNotFit(f'{report.algo} {report.model} does not fit {report.target} ({hbm_text} a '
                     f'device): {worst.name} needs {need}; largest buffers: {buffers}'
                     + (f"; also over: {', '.join(others)}" if others else '') + f'; {advice}.')


# ------------------------------------------------------------------------------------ main

MODES = ('auto', 'on', 'off')


def should_plan(config, mode: str = 'auto') -> bool:
    """Whether `main` plans before step 1: 'on', 'off', or 'auto' (models larger than the
    `small` preset, for the algorithms the plan knows)."""
    if mode not in MODES:
        raise ValueError(f'--memory_plan must be one of {MODES}, got {mode!r}')
    if mode == 'off' or config.get('algo') not in ALGOS:
        return False
    if mode == 'on':
        return True
    size = common.model_config_from(config.model).num_params()
    return size > model_config.get_model_config('small').num_params()


def check_run(config, target: str = 'local', hbm: int | None = None, log=None) -> Report:
    """The plan of `config` as it stands (its own batch, lengths and mesh) on `target`; raises
    `check_fits`'s one-line DoesNotFit when a program does not fit (`hbm` defaults to the
    target's, read from the device where it tells)."""
    report = plan(config, target, log=log)
    check_fits(report, hbm_bytes(target) if hbm is None else hbm)
    return report
