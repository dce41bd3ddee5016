"""Refuses bad input before a run spends compute: configs, data and starting points.

Why one module, run first by `loop.train`: a multi-day run that dies at hour 30 on a malformed
record or a checkpoint of the wrong model costs a week. Every check here is cheap next to one
training step (it reads the data once on the host and the checkpoints' metadata, never a tensor)
and runs before the workdir gets anything but `error.log`, so a refused run leaves nothing that
a re-run could mistake for progress. Each failure is one line naming the config key, or the file
and line, and what was expected.

Mesh policy: a mesh must fit the devices (-1 takes the rest; sizes must divide the count); an
explicit mesh smaller than the devices is allowed on one host (tests run one device of eight).
"""

from __future__ import annotations

import json
import math
import os

import jax
import ml_collections
from absl import logging

from alignjax import experiment_lib
from alignjax import specs
from alignjax import trainers
from alignjax.data import chat
from alignjax.data import inputs
from alignjax.data.records import DataError
from alignjax.errors import ValidationError, require
from alignjax.interop import peft
from alignjax.models import Decoder
from alignjax.trainers import common

ERROR_LOG = 'error.log'

# Record kind each algorithm reads from config.data.train.
_KINDS = {
    'sft': 'sft', 'reward_model': 'preference', 'preference_model': 'preference',
    'dpo': 'preference'
}  # every other (online) algorithm reads prompts

# Context (positions) a preset is built for. RoPE has no hard limit; beyond this it extrapolates.
# The tiny and small presets are random-init CPU models: their figure is a stated budget.
CONTEXT = {
    'tiny': 256, 'small': 1024, 'llama3_8b': 8192, 'llama3_2_1b': 131_072, 'qwen2_5_7b': 32_768,
    'mistral_7b': 32_768, 'gemma2_2b': 8192
}

# Starting points: key -> whether its params must fit this run's policy (Decoder) shapes.
_STARTS = {
    'init_from': True, 'reference_from': True, 'backbone_from': True, 'reward.reward_from': False,
    'nash.preference_from': False
}


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split('.'):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_fields(config) -> None:
    """Types, signs and choices of the keys in `experiment_lib.BOUNDS` (beside their defaults)."""
    if config.get('algo') not in trainers.ALGORITHMS:
        raise ValidationError(f'config.algo={config.get("algo")!r}: expected one of '
                              f'{sorted(trainers.ALGORITHMS)}')
    for key, spec in experiment_lib.BOUNDS.items():
        present, v = _lookup(config, key)
        if not present:
            continue
        if spec.choices:
            if v not in spec.choices:
                raise ValidationError(f'config.{key}={v!r}: expected one of {spec.choices}')
            continue
        kind, low, strict = spec.kind, spec.low, spec.strict
        ok_type = {
            'int': isinstance(v, int), 'number': isinstance(v, (int, float)), 'str': isinstance(
                v, str)
        }[kind] and not isinstance(v, bool)
        sign = '' if low is None else ('positive ' if strict else 'non-negative ')
        expected = f'a {sign}{kind}' + ('' if spec.below is None else f' below {spec.below}')
        if not ok_type:
            raise ValidationError(f'config.{key} must be {expected}, got {v!r} '
                                  f'({type(v).__name__})')
        if low is not None and (v <= low if strict else v < low) or \
                kind == 'number' and not math.isfinite(v) or \
                spec.below is not None and v >= spec.below:
            raise ValidationError(f'config.{key} must be {expected}, got {v!r}')
    if config.get('tracker'):  # its package, before any compute
        require(config.tracker, f'config.tracker={config.tracker}', 'track')
    present, template = _lookup(config, 'data.chat_template')
    if present:
        if not isinstance(template, str) or not template:
            raise ValidationError(f'config.data.chat_template={template!r}: expected one of '
                                  f'{chat.MODES} or a Jinja file')
        if template not in chat.MODES:
            try:
                chat.compile_template(chat.read_template(template))
            except ValidationError:
                raise
            except Exception as e:  # pylint: disable=broad-except  (jinja2's syntax errors)
                raise ValidationError(f'config.data.chat_template={template!r}: not a valid '
                                      f'Jinja template ({e})') from None


def _resolved_mesh(shape, n: int) -> tuple[int, int, int]:
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(s, int) and (s > 0 or s == -1) for s in shape):
        raise ValidationError(f'config.mesh.shape={shape}: expected 3 positive ints (data, fsdp, '
                              f'tensor), one of which may be -1')
    if shape.count(-1) > 1:
        raise ValidationError(f'config.mesh.shape={shape}: at most one entry may be -1')
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n % known:
            raise ValidationError(f'config.mesh.shape={shape}: {n} devices do not divide by '
                                  f'{known}; the sizes must multiply to the device count')
        shape = tuple(n // known if s == -1 else s for s in shape)
    if math.prod(shape) > n:
        raise ValidationError(f'config.mesh.shape={shape} multiplies to {math.prod(shape)} '
                              f'devices; this run has {n}')
    return shape


def check_shapes(config) -> None:
    """Mesh against devices, batch against data parallelism and accumulation, lengths against
    the model's context."""
    data, fsdp, _ = _resolved_mesh(config.mesh.shape, jax.device_count())
    d = config.data
    dp = data * fsdp
    if d.batch_size % dp:
        raise ValidationError(f'config.data.batch_size={d.batch_size} is not divisible by the '
                              f'data-parallel size {dp} (mesh data x fsdp = {data} x {fsdp})')
    if d.batch_size % jax.process_count():
        raise ValidationError(f'config.data.batch_size={d.batch_size} is not divisible by the '
                              f'{jax.process_count()} processes')
    rows, what = d.batch_size, 'config.data.batch_size'
    if 'rl' in config:  # a rollout has batch_size * samples_per_prompt rows
        rows *= config.rl.samples_per_prompt
        what = f'the rollout of {rows} rows (data.batch_size x rl.samples_per_prompt)'
        if rows % config.rl.minibatches:
            raise ValidationError(f'config.rl.minibatches={config.rl.minibatches} does not divide '
                                  f'{what}')
        rows //= config.rl.minibatches
        what = f'a minibatch of {rows} rows'
    if rows % config.optim.microbatches:
        raise ValidationError(f'config.optim.microbatches={config.optim.microbatches} does not '
                              f'divide {what} ({rows} rows)')
    context, source = model_context(config)
    p = d.max_prompt_len
    needs = {'data.max_response_len': d.max_response_len}
    for key in ('eval.max_new_tokens', 'rl.max_new_tokens'):
        present, v = _lookup(config, key)
        if present:
            needs[key] = v
    for key, n in needs.items():
        if p + n > context:
            raise ValidationError(f'config.{key}={n}: with config.data.max_prompt_len={p} that is '
                                  f'{p + n} positions, beyond the context of {context} of {source}')


def model_context(config) -> tuple[int, str]:
    """(positions the model is built for, where that figure comes from)."""
    preset = config.model.get('preset', '')
    directory = specs.hf_dir(preset)
    if directory is not None:
        with open(os.path.join(directory, 'config.json')) as f:
            n = json.load(f).get('max_position_embeddings')
        if n:
            return int(n), f'{directory}/config.json'
    if preset in CONTEXT:
        return CONTEXT[preset], f'model preset {preset!r}'
    return 2048, 'a model of unknown context (assumed 2048)'


def starting_points(config) -> list[tuple[str, str]]:
    """(key, spec) of each `*_from` key that `config` sets."""
    present = [(key, *_lookup(config, key)) for key in _STARTS]
    return [(key, spec) for key, found, spec in present if found and spec]


def check_starting_points(config) -> None:
    """Every `*_from` key names something that exists, is a checkpoint, and fits the model."""
    for key, spec in starting_points(config):
        policy_shaped = _STARTS[key]
        if not isinstance(spec, str):
            raise ValidationError(f'config.{key} must be a string, got {spec!r}')
        start = specs.Start.parse(spec)
        if start.kind == 'experiment':
            _check_experiment_spec(key, spec)
        elif start.kind == 'peft':
            try:
                base = peft.read_config(start.value, key=key).get('base_model_name_or_path', '')
            except (OSError, ValueError) as e:
                raise ValidationError(str(e)) from None
            if not os.path.isfile(os.path.join(base or '', 'config.json')):
                raise ValidationError(f'config.{key}={spec!r}: its base_model_name_or_path '
                                      f'{base!r} is not a local Hugging Face checkpoint directory')
        elif start.kind == 'hf':
            if not os.path.isfile(os.path.join(start.value, 'config.json')):
                raise ValidationError(f'config.{key}={spec!r}: no Hugging Face checkpoint there '
                                      f'(expected {start.value}/config.json)')
        else:
            state = _checkpoint_state_dir(key, spec)
            if policy_shaped:
                _check_param_shapes(config, key, spec, state)


def _check_experiment_spec(key: str, spec: str) -> None:
    exp = experiment_lib.experiment_path(specs.Start.parse(spec).value)
    if not os.path.isfile(exp.split(':')[0]):
        raise ValidationError(f'config.{key}={spec!r}: no experiment file {exp.split(":")[0]!r}')
    try:
        experiment_lib.load_config(exp)
    except ValueError as e:
        raise ValidationError(f'config.{key}={spec!r}: {e}') from None


def _checkpoint_state_dir(key: str, path: str) -> str:
    """The state item of the newest finalized checkpoint of workdir `path`."""
    if not os.path.exists(path):
        raise ValidationError(f'config.{key}={path!r}: no such directory (expected a workdir '
                              f'with checkpoints/, experiment:PATH[:ARGS] or hf:DIR)')
    ckpts = os.path.join(path, 'checkpoints')
    steps = sorted(
        int(s)
        for s in (os.listdir(ckpts) if os.path.isdir(ckpts) else [])
        if s.isdigit() and os.path.isdir(os.path.join(ckpts, s, 'state')))
    if not steps:
        raise ValidationError(f'config.{key}={path!r} is not a checkpoint: expected '
                              f'{os.path.join(path, "checkpoints")}/<step>/state from a finished '
                              f'save')
    return os.path.join(ckpts, str(steps[-1]), 'state')


def _check_param_shapes(config, key: str, path: str, state_dir: str) -> None:
    """Compares the checkpoint's metadata with this run's policy shapes (nothing is loaded)."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    try:
        with ocp.PyTreeCheckpointer() as reader:
            meta = reader.metadata(state_dir)
        meta = getattr(meta, 'item_metadata', meta)['params']
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ValidationError(f'config.{key}={path!r}: unreadable checkpoint {state_dir} '
                              f'({type(e).__name__}: {e})') from None
    cfg = common.model_config_from(config.model)
    model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    expected = nnx.to_pure_dict(nnx.state(model))
    saved = {_name(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(meta)[0]}
    for p, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
        name = _name(p)
        if name not in saved:
            raise ValidationError(f'config.{key}={path!r}: the checkpoint has no parameter '
                                  f'{name!r} that config.model needs')
        if saved[name] != tuple(leaf.shape):
            raise ValidationError(f'config.{key}={path!r}: parameter {name!r} has shape '
                                  f'{saved[name]} in the checkpoint; config.model expects '
                                  f'{tuple(leaf.shape)}')


def _name(path) -> str:
    return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def check_data(config) -> dict:
    """Reads and checks every record (JSON, fields, UTF-8, lengths); returns the counts of
    config.data.truncation's policy per data spec."""
    kind = _KINDS.get(config.algo, 'prompt')
    d = config.data
    report = {}
    try:
        _, report[d.train] = inputs.load_records(config, kind, d.train, num_examples=d.num_examples,
                                                 seed=config.seed, with_counts=True)
        if d.get('eval'):
            _, report[d.eval] = inputs.load_records(config, kind, d.eval, split='eval',
                                                    seed=config.seed, with_counts=True)
    except DataError as e:
        raise ValidationError(str(e)) from None
    return report


def validate(config) -> dict:
    """Every check, cheapest first; returns the data report (see `check_data`)."""
    check_fields(config)
    check_shapes(config)
    check_starting_points(config)
    return check_data(config)


def validate_run(config, workdir: str) -> dict:
    """`validate`, writing only `workdir/error.log` when it refuses (the one-line message)."""
    try:
        report = validate(config)
    except (ValidationError, DataError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        write_error_log(workdir, message)
        raise ValidationError(message) from None
    for spec, counts in report.items():
        logging.info(
            'Data %s: %d records, %d prompts too long, %d truncated, %d skipped, '
            '%d with a reply cut', spec, counts['records'], counts['too_long'], counts['truncated'],
            counts['skipped'], counts['long_replies'])
    return report


def write_error_log(workdir: str | None, message: str, *, primary: bool | None = None) -> None:
    """`workdir/error.log`: the refusal, for whoever finds the workdir (primary process only;
    `primary=True` where JAX must not start yet, before `jax.distributed.initialize`)."""
    if primary is None:
        primary = jax.process_index() == 0
    if not workdir or not primary:
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, ERROR_LOG), 'w') as f:
            f.write(f'error: {message}\n')
    except OSError as e:  # a full disk: the message still reaches stderr
        logging.warning('Could not write %s/%s: %s', workdir, ERROR_LOG, e)
