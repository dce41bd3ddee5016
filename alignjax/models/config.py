"""Model configuration: one dataclass covers the Llama / Qwen / Gemma / Mistral decoder family.

Presets are plain data. `tiny` and `small` are for CPU tests and Colab; the public shapes
(Llama-3-8B, Qwen2.5-7B, Gemma-2-2B, Mistral-7B) let configs, memory estimates and the Hugging
Face importer speak of real models without downloading anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

REMAT_POLICIES = ('full', 'save_dots', 'offload_dots')
# Attention kernels (`models/attention.py`; 'splash' is refused there) and the key count at which
# 'auto' turns blockwise.
ATTENTION_IMPLS = ('auto', 'xla', 'blockwise', 'cudnn')
ATTENTION_THRESHOLD = 2048
# Models of at most this many layers run their layer scan unrolled by default (`scan_unroll`).
SHALLOW_LAYERS = 4
# The projections a low-rank adapter can adapt (`models/lora.py`), and those adapted by default
# (every projection of the blocks, PEFT's 'all-linear'; the output head is opt-in).
LORA_TARGETS = ('q', 'k', 'v', 'o', 'gate', 'up', 'down', 'lm_head')
DEFAULT_LORA_TARGETS = LORA_TARGETS[:-1]
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder-only transformer.

    Attributes:
        vocab_size: number of token ids.
        embed_dim: residual width d.
        num_layers: decoder blocks.
        num_heads: query heads.
        num_kv_heads: key/value heads (== num_heads: MHA; 1: MQA; in between: GQA).
        head_dim: width of one head.
        mlp_dim: hidden width of the gated MLP.
        activation: 'silu' (SwiGLU: Llama, Qwen, Mistral) or 'gelu_tanh' (GeGLU: Gemma).
        norm_eps: RMSNorm epsilon.
        norm_offset: Gemma's RMSNorm scales by (1 + w) with w initialised at 0.
        post_norms: Gemma-2/3 normalise the outputs of attention and MLP before the residual add.
        qk_norm: RMSNorm over head_dim of queries and keys (Qwen3, Gemma-3).
        attention_bias: biases on the q, k, v projections (Qwen2/2.5).
        rope_theta: RoPE base of global layers.
        rope_local_theta: RoPE base of sliding-window layers (Gemma-3); None -> the local layers
            use the global RoPE (rope_theta and rope_scaling).
        rope_scaling: None, {'type': 'linear', 'factor': f} or {'type': 'llama3', 'factor': f,
            'low_freq_factor': a, 'high_freq_factor': b, 'original_max_position': n}.
        rope_local_scaling: scaling of the sliding-window layers' RoPE when rope_local_theta is
            set (Gemma-3 4B and larger scale only their global layers); same format.
        sliding_window: window length of local layers, None for global attention everywhere.
        local_layer_period: with a window, layer i is global iff (i + 1) % period == 0 (Gemma-2: 2,
            Gemma-3: 6); 1 makes every layer local (Mistral).
        query_scale: multiplier of q.k; None -> head_dim ** -0.5.
        attn_logit_softcap: c in c * tanh(s / c) over attention logits (Gemma-2); None: off.
        final_logit_softcap: the same over output logits; None: off.
        embed_scale: multiply embeddings by sqrt(embed_dim) (Gemma).
        tie_embeddings: output projection is the transposed embedding table.
        param_dtype: storage dtype of parameters.
        dtype: compute dtype of matmuls (norms, softmax and logits stay float32).
        remat: rematerialise each block in the backward pass.
        remat_policy: what a rematerialised block keeps from its forward pass: 'full' (only its
            input: least memory), 'save_dots' (also the outputs of its matmuls: less recompute),
            'offload_dots' (those outputs in host memory, where the backend has one: TPU, GPU).
        scan_layers: store the blocks stacked ([L, ...] parameters) and run them under one
            `lax.scan` (the program, and its compile time, do not grow with depth); False stores
            a list of blocks and unrolls them in Python (the same numbers).
        scan_unroll: layers per iteration of that scan; 0 (default) unrolls a model of at most
            `SHALLOW_LAYERS` layers whole (on a CPU the scan's loop was about 15% of a
            2-layer DPO step) and runs deeper ones one layer an iteration, so that their program
            and compile time do not grow with depth.
        attention: 'auto' (the memory-efficient blockwise kernel when a call attends over at
            least `ATTENTION_THRESHOLD` keys with more than one query, the dense one below),
            'xla' (always dense: [B, H, T, S] scores), 'blockwise' (always blockwise), 'cudnn'
            (`jax.nn.dot_product_attention` on GPU; no soft-cap or per-layer window).
        lora_rank: rank r of low-rank adapters on the projections (`models/lora.py`); 0: none.
        lora_alpha: the adapters' scale is lora_alpha / lora_rank (PEFT's convention).
        lora_targets: the projections adapted, of 'q', 'k', 'v', 'o', 'gate', 'up', 'down' and
            'lm_head' (the output projection, tied or not).
        lora_dropout: dropout rate on each adapter's input in the training update (PEFT's
            lora_dropout); the sampler, scorer and evaluation run without it.
        base_quant: '' or 'int8': how the projection weights are stored (`models/quant.py`;
            int8 with a float32 scale per output channel, for a frozen base under adapters).
    """

    vocab_size: int = 264
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    mlp_dim: int = 128
    activation: str = 'silu'
    norm_eps: float = 1e-6
    norm_offset: bool = False
    post_norms: bool = False
    qk_norm: bool = False
    attention_bias: bool = False
    rope_theta: float = 10_000.0
    rope_local_theta: float | None = None
    rope_scaling: dict[str, Any] | tuple | None = None
    rope_local_scaling: dict[str, Any] | tuple | None = None
    sliding_window: int | None = None
    local_layer_period: int = 1
    query_scale: float | None = None
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    embed_scale: bool = False
    tie_embeddings: bool = True
    param_dtype: str = 'float32'
    dtype: str = 'float32'
    remat: bool = False
    remat_policy: str = 'full'
    scan_layers: bool = True
    scan_unroll: int = 0
    attention: str = 'auto'
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    lora_dropout: float = 0.0
    base_quant: str = ''

    def __post_init__(self):
        # Stored as sorted (key, value) pairs so that the config stays hashable (a jit static).
        for key in ('rope_scaling', 'rope_local_scaling'):
            if isinstance(getattr(self, key), dict):
                object.__setattr__(self, key, tuple(sorted(getattr(self, key).items())))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f'model.num_heads={self.num_heads} is not a multiple of '
                             f'model.num_kv_heads={self.num_kv_heads}')
        if self.activation not in ('silu', 'gelu_tanh'):
            raise ValueError("model.activation must be 'silu' or 'gelu_tanh', "
                             f'got {self.activation!r}')
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f'model.attention must be one of {ATTENTION_IMPLS}, '
                             f'got {self.attention!r}')
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f'model.remat_policy must be one of {REMAT_POLICIES}, '
                             f'got {self.remat_policy!r}')
        object.__setattr__(self, 'lora_targets', tuple(self.lora_targets))
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if self.lora_rank < 0 or unknown:
            raise ValueError(f'model.lora_rank must be >= 0 and model.lora_targets of '
                             f'{LORA_TARGETS}, got {self.lora_rank} and {self.lora_targets}')
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f'model.lora_dropout must be in [0, 1), got {self.lora_dropout}')
        if self.base_quant not in ('', 'int8'):
            raise ValueError(f"model.base_quant must be '' or 'int8', got {self.base_quant!r}")
        if self.scan_unroll < 0:
            raise ValueError(f'model.scan_unroll must be >= 0, got {self.scan_unroll}')
        for key in ('param_dtype', 'dtype'):
            if getattr(self, key) not in _DTYPES:
                raise ValueError(f'model.{key} must be one of {sorted(_DTYPES)}, '
                                 f'got {getattr(self, key)!r}')

    @property
    def layers_per_scan_step(self) -> int:
        """The `unroll` of the layer scan: `scan_unroll`, or all layers of a shallow model."""
        if self.scan_unroll:
            return min(self.scan_unroll, self.num_layers)
        return self.num_layers if self.num_layers <= SHALLOW_LAYERS else 1

    @property
    def jnp_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self):
        return _DTYPES[self.param_dtype]

    def rope(self, local: bool) -> tuple[float, tuple | None]:
        """(theta, scaling) of a local (sliding-window) or global layer's RoPE."""
        if local and self.rope_local_theta:
            return self.rope_local_theta, self.rope_local_scaling
        return self.rope_theta, self.rope_scaling

    def is_local_layer(self, i: int) -> bool:
        if self.sliding_window is None:
            return False
        return (i + 1) % self.local_layer_period != 0 if self.local_layer_period > 1 else True

    def replace(self, **kw) -> 'ModelConfig':
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Parameter count of the language model (embedding counted once if tied)."""
        d, h, kv, hd, f = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
        attn = d * hd * (h + 2 * kv) + h * hd * d + (hd *
                                                     (h + 2 * kv) if self.attention_bias else 0)
        norms = d * (4 if self.post_norms else 2) + (2 * hd if self.qk_norm else 0)
        block = attn + 3 * d * f + norms
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * block + emb + d


PRESETS: dict[str, ModelConfig] = {
    # CPU tests: compiles in seconds, learns the synthetic tasks in a minute.
    'tiny': ModelConfig(),
    # Colab-scale: a few million parameters.
    'small': ModelConfig(embed_dim=256, num_layers=4, num_heads=8, num_kv_heads=4, head_dim=32,
                         mlp_dim=768),
    'llama3_8b': ModelConfig(vocab_size=128_256, embed_dim=4096, num_layers=32, num_heads=32,
                             num_kv_heads=8, head_dim=128, mlp_dim=14_336, norm_eps=1e-5,
                             rope_theta=500_000.0, tie_embeddings=False, param_dtype='bfloat16',
                             dtype='bfloat16', remat=True),
    'llama3_2_1b': ModelConfig(
        vocab_size=128_256, embed_dim=2048, num_layers=16, num_heads=32, num_kv_heads=8,
        head_dim=64, mlp_dim=8192, norm_eps=1e-5, rope_theta=500_000.0, rope_scaling={
            'type': 'llama3', 'factor': 32.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position': 8192
        }, param_dtype='bfloat16', dtype='bfloat16', remat=True),
    'qwen2_5_7b': ModelConfig(vocab_size=152_064, embed_dim=3584, num_layers=28, num_heads=28,
                              num_kv_heads=4, head_dim=128, mlp_dim=18_944, norm_eps=1e-6,
                              rope_theta=1_000_000.0, attention_bias=True, tie_embeddings=False,
                              param_dtype='bfloat16', dtype='bfloat16', remat=True),
    'mistral_7b': ModelConfig(vocab_size=32_768, embed_dim=4096, num_layers=32, num_heads=32,
                              num_kv_heads=8, head_dim=128, mlp_dim=14_336, norm_eps=1e-5,
                              rope_theta=1_000_000.0, tie_embeddings=False, param_dtype='bfloat16',
                              dtype='bfloat16', remat=True),
    'gemma2_2b': ModelConfig(vocab_size=256_000, embed_dim=2304, num_layers=26, num_heads=8,
                             num_kv_heads=4, head_dim=256, mlp_dim=9216, activation='gelu_tanh',
                             norm_offset=True, post_norms=True, sliding_window=4096,
                             local_layer_period=2, query_scale=256**-0.5, attn_logit_softcap=50.0,
                             final_logit_softcap=30.0, embed_scale=True, param_dtype='bfloat16',
                             dtype='bfloat16', remat=True),
}


def get_model_config(name: str, **overrides) -> ModelConfig:
    """Preset by name, with field overrides; unknown names and fields raise, naming them."""
    if name not in PRESETS:
        raise ValueError(f'Unknown model preset {name!r}; known: {sorted(PRESETS)}')
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f'Unknown model config field(s) {unknown}; known: {sorted(fields)}')
    return dataclasses.replace(PRESETS[name], **overrides)
