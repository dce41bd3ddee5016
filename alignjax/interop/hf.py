"""Hugging Face checkpoints in and out: config.json + safetensors <-> `Decoder` + `ModelConfig`.

`load_hf` reads a transformers checkpoint (Llama, Qwen2/2.5/3, Mistral, Gemma 1/2/3 text) into a
`Decoder` whose parameters are placed directly on their shardings, one tensor at a time; `save_hf`
writes a `Decoder` back, gathering one tensor at a time, so that
`transformers.AutoModelForCausalLM.from_pretrained` loads it. Neither needs torch or transformers.

Layouts: HF stores a linear layer as weight[out, in] (y = x W^T); alignjax stores [in..., out...]
with heads split out (q_proj [D, H, hd], o_proj [H, hd, D]), so weights are transposed and
reshaped; biases [H * hd] become [H, hd]; norms and the embedding are copied as they are (Gemma's
RMSNorm stores the w of (1 + w), as alignjax does).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import shutil

from absl import logging
import jax
import numpy as np
from flax import nnx

from alignjax import sharding as sharding_lib
from alignjax.interop import safetensors_io
from alignjax.models.config import ModelConfig
from alignjax.models.transformer import LAYERS, Decoder

_PARAM_DTYPES = ('float32', 'bfloat16', 'float16')

# alignjax parameter path inside block i -> HF tensor name after `model.layers.{i}.`.
_LLAMA_LAYER = {
    ('attn_norm', 'scale'): 'input_layernorm.weight',
    **{('attn', f'{x}_proj'): f'self_attn.{x}_proj.weight' for x in 'qkvo'},
    **{('attn', f'{x}_bias'): f'self_attn.{x}_proj.bias' for x in 'qkv'},
    **{('attn', f'{x}_norm', 'scale'): f'self_attn.{x}_norm.weight' for x in 'qk'},
    ('mlp_norm', 'scale'): 'post_attention_layernorm.weight',
    **{('mlp', x): f'mlp.{x}.weight' for x in ('gate_proj', 'up_proj', 'down_proj')},
}
# Gemma-2/3: `post_attention_layernorm` is the attention output's post-norm; the MLP has two.
_GEMMA2_LAYER = {
    **_LLAMA_LAYER,
    ('attn_post_norm', 'scale'): 'post_attention_layernorm.weight',
    ('mlp_norm', 'scale'): 'pre_feedforward_layernorm.weight',
    ('mlp_post_norm', 'scale'): 'post_feedforward_layernorm.weight',
}
_TOP = {('embedding',): 'model.embed_tokens.weight', ('final_norm', 'scale'): 'model.norm.weight',
        ('lm_head',): 'lm_head.weight'}
# Weights HF stores transposed, with the number of leading alignjax axes that are input axes.
_TRANSPOSED = {
    'q_proj': 1, 'k_proj': 1, 'v_proj': 1, 'o_proj': 2, 'gate_proj': 1, 'up_proj': 1,
    'down_proj': 1, 'lm_head': 1
}
_FLAT = ('q_bias', 'k_bias', 'v_bias')  # HF [H * hd] <-> alignjax [H, hd]
_ACTIVATIONS = {
    'silu': 'silu', 'swish': 'silu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_new': 'gelu_tanh'
}
# transformers' defaults (PreTrainedConfig subclasses) for fields a config.json may leave out.
_DEFAULTS = {
    'rms_norm_eps': 1e-6, 'hidden_act': 'silu', 'rope_theta': 10_000.0,
    'tie_word_embeddings': False, 'max_position_embeddings': 2048
}
_GEMMA_DEFAULTS = {
    'tie_word_embeddings': True, 'head_dim': 256, 'hidden_act': 'gelu_pytorch_tanh',
    'hidden_activation': 'gelu_pytorch_tanh', 'max_position_embeddings': 8192,
    'num_key_value_heads': 4, 'sliding_window': 4096, 'query_pre_attn_scalar': 256
}
_QWEN_DEFAULTS = {
    'num_key_value_heads': 32, 'sliding_window': 4096, 'max_window_layers': 28,
    'max_position_embeddings': 32768
}


@dataclasses.dataclass(frozen=True)
class Family:
    """How one transformers model_type maps onto `ModelConfig` and alignjax parameter names."""

    architecture: str
    layer_names: dict
    act_key: str = 'hidden_act'
    gemma: bool = False  # RMSNorm scales by (1 + w); embeddings are multiplied by sqrt(d)
    post_norms: bool = False
    qk_norm: bool = False
    qkv_bias: bool = False  # Qwen2: biases on q, k, v (always; no config switch)
    bias_switch: bool = False  # config `attention_bias` (it would also add an o_proj bias)
    sliding: str | None = None  # 'all' (Mistral), 'qwen' (use_sliding_window), 'types' (Gemma)
    softcaps: bool = False
    query_pre_attn_scalar: bool = False
    local_rope: bool = False  # Gemma-3: rope_parameters per layer type
    defaults: dict = dataclasses.field(default_factory=dict)


FAMILIES = {
    'llama': Family('LlamaForCausalLM', _LLAMA_LAYER, bias_switch=True),
    'mistral': Family(
        'MistralForCausalLM', _LLAMA_LAYER, sliding='all', defaults={
            'sliding_window': 4096, 'num_key_value_heads': 8, 'max_position_embeddings': 131_072
        }),
    'qwen2': Family('Qwen2ForCausalLM', _LLAMA_LAYER, qkv_bias=True, sliding='qwen',
                    defaults=_QWEN_DEFAULTS),
    'qwen3': Family('Qwen3ForCausalLM', _LLAMA_LAYER, qk_norm=True, bias_switch=True,
                    sliding='qwen', defaults={**_QWEN_DEFAULTS, 'head_dim': 128}),
    'gemma': Family('GemmaForCausalLM', _LLAMA_LAYER, gemma=True, bias_switch=True,
                    defaults={**_GEMMA_DEFAULTS, 'num_key_value_heads': 16}),
    'gemma2': Family(
        'Gemma2ForCausalLM', _GEMMA2_LAYER, act_key='hidden_activation', gemma=True,
        post_norms=True, bias_switch=True, sliding='types', softcaps=True,
        query_pre_attn_scalar=True, defaults={
            **_GEMMA_DEFAULTS, 'sliding_window_pattern': 2, 'attn_logit_softcapping': 50.0,
            'final_logit_softcapping': 30.0
        }),
    'gemma3_text': Family(
        'Gemma3ForCausalLM', _GEMMA2_LAYER, act_key='hidden_activation', gemma=True,
        post_norms=True, qk_norm=True, bias_switch=True, sliding='types', softcaps=True,
        query_pre_attn_scalar=True, local_rope=True, defaults={
            **_GEMMA_DEFAULTS, 'sliding_window_pattern': 6, 'rope_theta': 1_000_000.0,
            'rope_local_base_freq': 10_000.0, 'max_position_embeddings': 131_072
        }),
}


def _family(model_type, source) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f'{source}: model_type={model_type!r} is not supported; supported: '
                         f'{sorted(FAMILIES)}')
    return FAMILIES[model_type]


def _rope_one(params: dict, max_position: int, source: str):
    """(theta, rope_scaling or None) of one rope_parameters dict."""
    kind = params.get('rope_type', params.get('type', 'default'))
    if params.get('partial_rotary_factor', 1.0) != 1.0:
        raise ValueError(f'{source}: partial_rotary_factor={params["partial_rotary_factor"]} is '
                         'not supported (alignjax rotates the whole head)')
    theta = float(params['rope_theta'])
    if kind == 'default':
        return theta, None
    if kind == 'linear':
        return theta, {'type': 'linear', 'factor': float(params['factor'])}
    if kind == 'llama3':
        return theta, {
            'type': 'llama3', 'factor': float(params['factor']),
            'low_freq_factor': float(params['low_freq_factor']),
            'high_freq_factor': float(params['high_freq_factor']), 'original_max_position': int(
                params.get('original_max_position_embeddings', max_position))
        }
    raise ValueError(f'{source}: rope_parameters.rope_type={kind!r} is not supported '
                     '(default, linear, llama3)')


def _local_layers(hf: dict, fam: Family, get, n: int, source: str):
    """(sliding window or None, [is layer i a sliding-window layer])."""
    window = get('sliding_window') if fam.sliding != 'qwen' or get('use_sliding_window') else None
    if fam.sliding is None or not window:
        return None, [False] * n
    if fam.sliding == 'all':
        return int(window), [True] * n
    types = hf.get('layer_types')
    if types is None and fam.sliding == 'qwen':
        types = [
            'sliding_attention' if i >= get('max_window_layers') else 'full_attention'
            for i in range(n)
        ]
    elif types is None:
        p = hf.get('sliding_window_pattern',
                   hf.get('_sliding_window_pattern', get('sliding_window_pattern')))
        types = ['sliding_attention' if (i + 1) % p else 'full_attention' for i in range(n)]
    if len(types) != n or set(types) - {'sliding_attention', 'full_attention'}:
        raise ValueError(f'{source}: layer_types={types} is not supported (expected {n} entries of '
                         'sliding_attention / full_attention)')
    return int(window), [t == 'sliding_attention' for t in types]


def _period(local: list[bool], source: str) -> int:
    """alignjax's local_layer_period p (layer i global iff (i + 1) % p == 0) for a layer pattern."""
    if all(local) or not any(local):
        return 1
    for p in range(2, len(local) + 1):
        if all(is_local == bool((i + 1) % p) for i, is_local in enumerate(local)):
            return p
    raise ValueError(f'{source}: layer_types pattern {["L" if x else "G" for x in local]} '
                     '(L: sliding, G: full) is not supported: alignjax makes layer i global iff '
                     '(i + 1) % local_layer_period == 0')


def config_from_hf(hf_config: dict, *, source: str = 'config.json') -> ModelConfig:
    """The `ModelConfig` of a transformers config.json dict (llama, mistral, qwen2, qwen3, gemma,
    gemma2, gemma3_text); a feature alignjax lacks raises ValueError naming the field and `source`.
    """
    hf = hf_config
    fam = _family(hf.get('model_type'), source)
    get = lambda key: hf[key] if key in hf else fam.defaults.get(key, _DEFAULTS.get(key))
    for key in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
                'num_attention_heads'):
        if key not in hf:
            raise ValueError(f'{source}: missing field {key!r}')
    checks = [('mlp_bias', 'MLP biases'), ('quantization_config', 'quantized weights'),
              ('use_bidirectional_attention', 'bidirectional attention')]
    if fam.bias_switch:
        checks.append(('attention_bias', 'it adds an o_proj bias, which alignjax lacks'))
    for key, why in checks:
        if get(key):
            raise ValueError(f'{source}: {key}={get(key)!r} is not supported ({why})')
    act = get(fam.act_key)
    # transformers reads Gemma-1's legacy hidden_act 'gelu' as the tanh approximation.
    gemma1_gelu = (act, hf['model_type']) == ('gelu', 'gemma')
    activation = 'gelu_tanh' if gemma1_gelu else _ACTIVATIONS.get(act)
    if activation is None:
        raise ValueError(f'{source}: {fam.act_key}={act!r} is not supported (silu or '
                         'gelu_pytorch_tanh)')
    n, heads = hf['num_hidden_layers'], hf['num_attention_heads']
    window, local = _local_layers(hf, fam, get, n, source)

    raw = hf.get('rope_scaling') or hf.get('rope_parameters') or {}
    if fam.local_rope:
        nested = 'full_attention' in raw or 'sliding_attention' in raw
        full = dict((raw.get('full_attention') or {}) if nested else raw)
        slide = dict((raw.get('sliding_attention') or {}) if nested else {})
        slide.setdefault('rope_theta', get('rope_local_base_freq'))
    else:
        full = dict(raw)
        slide = full
    full.setdefault('rope_theta', get('rope_theta'))
    max_position = get('max_position_embeddings')
    theta, scaling = _rope_one(full, max_position, source)
    local_theta, local_scaling = _rope_one(slide, max_position, source)
    if all(local):
        theta, scaling = local_theta, local_scaling
    separate = any(local) and (local_theta, local_scaling) != (theta, scaling)
    dtype = hf.get('dtype', hf.get('torch_dtype'))
    softcap = lambda key: None if get(key) is None else float(get(key))
    return ModelConfig(
        vocab_size=hf['vocab_size'], embed_dim=hf['hidden_size'], num_layers=n, num_heads=heads,
        num_kv_heads=get('num_key_value_heads') or heads, head_dim=get('head_dim')
        or hf['hidden_size'] // heads, mlp_dim=hf['intermediate_size'], activation=activation,
        norm_eps=float(get('rms_norm_eps')), norm_offset=fam.gemma, post_norms=fam.post_norms,
        qk_norm=fam.qk_norm, attention_bias=fam.qkv_bias, rope_theta=theta, rope_scaling=scaling,
        rope_local_theta=local_theta if separate else None,
        rope_local_scaling=local_scaling if separate else None,
        sliding_window=window if any(local) else None, local_layer_period=_period(local, source),
        query_scale=(float(get('query_pre_attn_scalar'))**-0.5
                     if fam.query_pre_attn_scalar else None),
        attn_logit_softcap=softcap('attn_logit_softcapping') if fam.softcaps else None,
        final_logit_softcap=softcap('final_logit_softcapping') if fam.softcaps else None,
        embed_scale=fam.gemma, tie_embeddings=bool(
            get('tie_word_embeddings')), param_dtype=dtype if dtype in _PARAM_DTYPES else 'float32',
        dtype=dtype if dtype in _PARAM_DTYPES else 'float32')


def _semantics(cfg: ModelConfig) -> dict:
    """The fields that decide what a config computes, with equivalent spellings made equal."""
    local = tuple(cfg.is_local_layer(i) for i in range(cfg.num_layers))
    out = dataclasses.asdict(cfg)
    # How a config runs (dtypes, remat, layer layout) is not what it computes.
    for key in (
            'param_dtype',
            'dtype',
            'remat',
            'remat_policy',
            'scan_layers',
            'scan_unroll',
            'attention',
            'local_layer_period',
            'rope_local_theta',
            'rope_local_scaling',
            # Adapters sit beside the base weights a checkpoint holds (interop/peft.py).
            'lora_rank',
            'lora_alpha',
            'lora_targets'):
        del out[key]
    out.update(
        local_layers=local, sliding_window=cfg.sliding_window if any(local) else None,
        rope_theta=None if all(local) else cfg.rope_theta,
        rope_scaling=None if all(local) else cfg.rope_scaling,
        local_rope=cfg.rope(True) if any(local) else None,
        query_scale=round(cfg.head_dim**-0.5 if cfg.query_scale is None else cfg.query_scale, 10))
    return out


def _rope_out(theta: float, scaling) -> dict:
    out = {'rope_type': 'default', 'rope_theta': float(theta)}
    if scaling is not None:
        s = dict(scaling)
        out.update(rope_type=s['type'], factor=s['factor'])
        if s['type'] == 'llama3':
            out.update(low_freq_factor=s['low_freq_factor'], high_freq_factor=s['high_freq_factor'],
                       original_max_position_embeddings=s['original_max_position'])
    return out


def hf_config(cfg: ModelConfig, model_type: str) -> dict:
    """The config.json dict of `cfg` as a transformers `model_type`; ValueError if that family
    cannot express `cfg` (checked by reading the dict back with `config_from_hf`)."""
    fam = _family(model_type, 'save_hf')
    local = [cfg.is_local_layer(i) for i in range(cfg.num_layers)]
    types = ['sliding_attention' if x else 'full_attention' for x in local]
    out = {
        'architectures': [fam.architecture], 'model_type': model_type, 'vocab_size': cfg.vocab_size,
        'hidden_size': cfg.embed_dim, 'intermediate_size': cfg.mlp_dim,
        'num_hidden_layers': cfg.num_layers, 'num_attention_heads': cfg.num_heads,
        'num_key_value_heads': cfg.num_kv_heads, 'head_dim': cfg.head_dim,
        'rms_norm_eps': cfg.norm_eps,
        fam.act_key: 'silu' if cfg.activation == 'silu' else 'gelu_pytorch_tanh',
        'tie_word_embeddings': cfg.tie_embeddings, 'dtype': cfg.param_dtype
    }
    rope = _rope_out(cfg.rope_theta, cfg.rope_scaling)
    if fam.local_rope:
        rope = {'full_attention': rope, 'sliding_attention': _rope_out(*cfg.rope(True))}
    out['rope_parameters'] = rope
    if fam.bias_switch:
        out['attention_bias'] = False
    if fam.sliding == 'all':
        out['sliding_window'] = cfg.sliding_window if any(local) else None
    elif fam.sliding == 'qwen':
        out.update(use_sliding_window=any(local), layer_types=types,
                   sliding_window=cfg.sliding_window if any(local) else None)
    elif fam.sliding == 'types':  # transformers builds the sliding mask even with no local layer
        out.update(sliding_window=cfg.sliding_window or fam.defaults['sliding_window'],
                   layer_types=types)
    if fam.query_pre_attn_scalar:
        scalar = (cfg.query_scale or cfg.head_dim**-0.5)**-2
        out['query_pre_attn_scalar'] = (round(scalar) if abs(scalar
                                                             - round(scalar)) < 1e-6 else scalar
                                       )  # transformers types it as int
    if fam.softcaps:
        out.update(attn_logit_softcapping=cfg.attn_logit_softcap,
                   final_logit_softcapping=cfg.final_logit_softcap)
    want, got = _semantics(cfg), _semantics(config_from_hf(out, source=f'save_hf({model_type})'))
    differ = sorted(k for k in want if want[k] != got[k])
    if differ:
        raise ValueError(f'model_type={model_type!r} cannot express this config: '
                         + ', '.join(f'{k}={want[k]!r} (would be {got[k]!r})' for k in differ))
    return out


def _hf_name(path: tuple, fam: Family) -> str:
    if path in _TOP:
        return _TOP[path]
    if path[0] == 'layers' and tuple(path[2:]) in fam.layer_names:
        return f'model.layers.{path[1]}.{fam.layer_names[tuple(path[2:])]}'
    raise ValueError(f'parameter {"/".join(map(str, path))} has no Hugging Face name')


def _hf_shape(leaf: str, shape: tuple) -> tuple:
    if leaf in _TRANSPOSED:
        k = _TRANSPOSED[leaf]
        return (math.prod(shape[k:]), math.prod(shape[:k]))
    return (math.prod(shape),) if leaf in _FLAT else tuple(shape)


def _to_hf(x: np.ndarray, leaf: str) -> np.ndarray:
    if leaf in _TRANSPOSED:
        return x.reshape(math.prod(x.shape[:_TRANSPOSED[leaf]]), -1).T
    return x.reshape(-1) if leaf in _FLAT else x


def read_config(directory: str) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face checkpoint directory (its config.json)."""
    config_path = os.path.join(directory, 'config.json')
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f'{directory}: no config.json (not a Hugging Face checkpoint '
                                'directory)')
    with open(config_path) as f:
        return config_from_hf(json.load(f), source=config_path)


def _model_type(directory: str) -> str:
    with open(os.path.join(directory, 'config.json')) as f:
        return json.load(f)['model_type']


def _tensors(state: nnx.State, fam: Family):
    """(HF name, layer, path, variable) for every parameter of a Decoder's `state`, in the
    checkpoint's one-tensor-per-layer view: a stacked variable (scanned layers, [L, ...])
    appears once per layer with `layer` its index; every other one once with layer None."""
    out = []
    for path, var in state.flat_state():
        path = tuple(path)
        if path[0] == LAYERS and not isinstance(path[1], int):  # stacked: ('layers', *rest)
            out += [
                (_hf_name((LAYERS, i, *path[1:]), fam), i, path, var) for i in range(var.shape[0])
            ]
        else:
            out.append((_hf_name(path, fam), None, path, var))
    return out


def _fill(state: nnx.State, shardings: dict, directory: str) -> tuple[int, int]:
    """Reads every parameter of `state` (a Decoder's, or a backbone's) from the checkpoint in
    `directory` straight onto `shardings[path]`: each process reads only the blocks of its own
    devices' shards (`safetensors_io.Checkpoint.read_block`), one tensor at a time. Returns the
    bytes read by this process and the checkpoint's total.

    Every other checkpoint tensor is an error, except the output head where `state` has none (tied
    embeddings, or a backbone under a scalar head).
    """
    model_type = _model_type(directory)
    fam = FAMILIES[model_type]
    ckpt = safetensors_io.Checkpoint(directory)
    tensors = _tensors(state, fam)
    names = {name for name, *_ in tensors}
    ignored = lambda key: key.endswith('rotary_emb.inv_freq') or (key == _TOP[
        ('lm_head',)] and _TOP[('lm_head',)] not in names)
    missing = sorted(names - set(ckpt.entries))
    unexpected = sorted(k for k in set(ckpt.entries) - names if not ignored(k))
    if missing or unexpected:
        raise ValueError(f'{directory}: the tensors do not match config.json ({model_type}): '
                         f'missing {missing}, unexpected {unexpected}')
    by_path = {}
    for hf_name, layer, path, var in tensors:
        shape = var.shape if layer is None else var.shape[1:]
        if ckpt.shape(hf_name) != _hf_shape(path[-1], shape):
            raise ValueError(f'{directory}: tensor {hf_name} has shape {ckpt.shape(hf_name)}, '
                             f'the model expects {_hf_shape(path[-1], shape)}')
        by_path.setdefault(path, []).append(hf_name)
    for path, var in state.flat_state():
        path, names = tuple(path), by_path[tuple(path)]
        stacked = path[0] == LAYERS and not isinstance(path[1], int)
        blocks = {}  # devices holding the same shard get one read

        def shard(index, path=path, names=names, stacked=stacked, var=var, blocks=blocks):
            key = tuple((s.start, s.stop) for s in index)
            if key not in blocks:
                if stacked:
                    layers = range(*index[0].indices(var.shape[0]))
                    x = np.stack([
                        _block(ckpt, names[i], path[-1], var.shape[1:], index[1:]) for i in layers
                    ])
                else:
                    x = _block(ckpt, names[0], path[-1], var.shape, index)
                blocks[key] = x.astype(var.dtype)
            return blocks[key]

        var.set_value(jax.make_array_from_callback(var.shape, shardings[path], shard))
    total = sum(ckpt.nbytes(name) for names in by_path.values() for name in names)
    logging.info("%s: read %.1f of %.1f MiB of tensors (this process's shards)", directory,
                 ckpt.bytes_read / 2**20, total / 2**20)
    return ckpt.bytes_read, total


def _block(ckpt, name: str, leaf: str, shape: tuple, index: tuple) -> np.ndarray:
    """Block `index` (slices of the model's `shape`) of checkpoint tensor `name`, reading only
    the rows it needs: the model's axes map to the checkpoint's (transposed, or flattened) as
    `_to_hf` writes them, a range of the first of several flattened axes staying contiguous."""
    idx = [range(*s.indices(n)) for s, n in zip(index, shape)]
    if leaf in _TRANSPOSED:  # checkpoint axes: (shape[k:] flattened, shape[:k] flattened)
        k = _TRANSPOSED[leaf]
        groups = [(shape[k:], idx[k:]), (shape[:k], idx[:k])]
    elif leaf in _FLAT:
        groups = [(shape, idx)]
    else:
        groups = [((n,), [r]) for n, r in zip(shape, idx)]
    ranges, sub_shapes, rest = [], [], []
    for dims, rs in groups:
        inner = math.prod(dims[1:])
        if all(r == range(n) for r, n in zip(rs[1:], dims[1:])):
            ranges.append((rs[0].start * inner, rs[0].stop * inner))
            sub_shapes.append((len(rs[0]), *dims[1:]))
            rest.append([slice(None)] * len(dims))
        else:  # a range inside a later flattened axis: read the whole axis, cut it in memory
            ranges.append((0, math.prod(dims)))
            sub_shapes.append(tuple(dims))
            rest.append([slice(r.start, r.stop) for r in rs])
    block = ckpt.read_block(name, ranges)
    if leaf in _TRANSPOSED:
        block, sub_shapes, rest = block.T, sub_shapes[::-1], rest[::-1]
    block = block.reshape(tuple(d for sub in sub_shapes for d in sub))
    return block[tuple(s for r in rest for s in r)]


def load_hf(directory: str, mesh, *, rules=None, dtype=None) -> tuple[Decoder, ModelConfig]:
    """A `Decoder` and its `ModelConfig` from a Hugging Face checkpoint directory.

    Args:
        directory: holds config.json and model.safetensors (or shards and their index).
        mesh: the device mesh; every tensor goes straight onto its own sharding.
        rules: logical-axis rules (`sharding.rules_from_config` format); None: the defaults.
        dtype: parameter and compute dtype ('float32', 'bfloat16', 'float16'); None: the
            checkpoint's (that of its embedding).

    Returns:
        (model, cfg).
    """
    cfg = read_config(directory)
    ckpt = safetensors_io.Checkpoint(directory)
    if dtype is None and _TOP[('embedding',)] in ckpt.entries:
        dtype = ckpt.dtype(_TOP[('embedding',)]).name
    name = cfg.param_dtype if dtype is None else (
        dtype if isinstance(dtype, str) else np.dtype(dtype).name)
    cfg = cfg.replace(param_dtype=name, dtype=name)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    shardings = dict(
        sharding_lib.state_shardings(state, mesh,
                                     sharding_lib.rules_from_config(rules)).flat_state())
    _fill(state, {tuple(k): v for k, v in shardings.items()}, directory)
    return nnx.merge(graphdef, state), cfg


def load_into(module: Decoder, directory: str, *, key: str = 'init_from') -> None:
    """Overwrites a built `Decoder`'s parameters (a policy, or the backbone of a reward, value or
    preference model) in place from a Hugging Face checkpoint, keeping their shardings and dtype.

    The module's config must compute what the checkpoint's config.json describes (build it with
    the experiment argument `model=hf:DIR`); parameters the checkpoint has no tensor for (the
    scalar heads outside the backbone) keep their fresh initialisation.
    """
    if not isinstance(module, Decoder):
        raise TypeError(f'config.{key}=hf:{directory}: expected a Decoder, got '
                        f'{type(module).__name__}')
    want = _semantics(read_config(directory))
    got = _semantics(module.cfg)
    differ = sorted(k for k in want if want[k] != got[k])
    if differ:
        raise ValueError(f'config.{key}=hf:{directory}: config.model differs from its '
                         'config.json in ' + ', '.join(f'{k} ({got[k]!r} here, {want[k]!r} '
                                                       'there)' for k in differ)
                         + f'; build the model with model=hf:{directory}')
    state = nnx.state(module, nnx.Param)
    shardings = {tuple(path): var.get_value().sharding for path, var in state.flat_state()}
    _fill(state, shardings, directory)
    nnx.update(module, state)


# Copied from `tokenizer_dir`; generation_config.json carries the EOS ids that generate() stops on.
_TOKENIZER_FILES = ('tokenizer*', 'special_tokens_map.json', 'added_tokens.json', 'vocab.*',
                    'merges.txt', '*.model', 'chat_template*', 'generation_config.json')


def save_hf(model: Decoder, cfg: ModelConfig, directory: str, *, model_type: str,
            tokenizer_dir: str | None = None) -> None:
    """Writes config.json and model.safetensors (and tokenizer files) for transformers.

    Args:
        model: a `Decoder` with its language-model head.
        cfg: its config (checked against `model.cfg`).
        directory: created if needed.
        model_type: one of `FAMILIES`; ValueError if that family cannot express `cfg`.
        tokenizer_dir: if given, its tokenizer files (and generation_config.json) are copied.

    Tensors are gathered to the host one at a time and streamed into the file, in the model's
    parameter dtype. On several processes every process must call this (the gathers are
    collective); process 0 writes.
    """
    if not isinstance(model, Decoder) or not model.has_lm_head:
        raise ValueError('save_hf writes a language model: a Decoder built with lm_head=True')
    if _semantics(model.cfg) != _semantics(cfg):
        raise ValueError('save_hf: cfg does not describe model (compare model.cfg)')
    config = hf_config(cfg, model_type)
    fam = FAMILIES[model_type]
    tensors = []
    for hf_name, layer, path, var in sorted(_tensors(nnx.state(model, nnx.Param), fam),
                                            key=lambda e: e[0]):
        x, leaf = var.get_value(), path[-1]
        shape = x.shape if layer is None else x.shape[1:]
        get = (lambda x=x: x) if layer is None else (lambda x=x, i=layer: x[i])
        tensors.append(
            (hf_name, _hf_shape(leaf, shape), x.dtype,
             lambda get=get, leaf=leaf: _to_hf(sharding_lib.to_global_host(get()), leaf)))
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, 'config.json'), 'w') as f:
            json.dump(config, f, indent=2, sort_keys=True)
    safetensors_io.write(os.path.join(directory, 'model.safetensors') if writer else None, tensors)
    if writer and tokenizer_dir is not None:
        for pattern in _TOKENIZER_FILES:
            for path in glob.glob(os.path.join(tokenizer_dir, pattern)):
                shutil.copy2(path, directory)
