"""The decoder and the models built on it: language model, value, reward and preference models.

All models take `tokens[B, T]` and `mask[B, T]` (1 on real tokens). Positions count real tokens
(`cumsum(mask) - 1`), so left-padding a prompt does not move any real token. With a KV cache
(sampling) the caller passes `positions` and the cache's key mask itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from alignjax.models import lora, quant
from alignjax.models.config import ModelConfig
from alignjax.models.layers import BTD, Block, RMSNorm, param, rope_inverse_frequencies, softcap
from alignjax.sharding import constrain

LAYERS = 'layers'  # the logical axis of stacked layers (replicated by the default rules)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position of each token among the real tokens of its row (pads get 0)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last real token of each row ([left-pad | tokens | right-pad] layouts)."""
    idx = jnp.arange(mask.shape[-1])
    return jnp.max(jnp.where(mask.astype(bool), idx, -1), axis=-1).clip(0)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> list[dict]:
    """A zeroed KV cache: one {'k', 'v'} pair of [B * kv_heads, S, head_dim] per layer (row
    b * kv_heads + h holds head h of batch row b; see `Attention._cached_call`)."""
    dtype = dtype or cfg.jnp_dtype
    shape = (batch * cfg.num_kv_heads, length, cfg.head_dim)
    return [
        {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers)
    ]


def stack_cache(cache: list[dict]) -> dict:
    """A per-layer cache (`init_cache`) as one {'k', 'v'} of [L, B * kv_heads, S, head_dim]: the
    layout the scanned blocks carry."""
    return {k: jnp.stack([c[k] for c in cache]) for k in cache[0]}


def unstack_cache(cache: dict) -> list[dict]:
    return [{k: v[i] for k, v in cache.items()} for i in range(next(iter(cache.values())).shape[0])]


def _layer_flags(cfg: ModelConfig, i: int):
    """Layer i's local/global flag (a Python bool) and RoPE inverse frequencies."""
    local = cfg.is_local_layer(i)
    return local, rope_inverse_frequencies(cfg.head_dim, *cfg.rope(local))


def stack_blocks(blocks: list[Block]) -> Block:
    """One Block whose every parameter is the stack of `blocks`' ([L, ...], logical axes
    ('layers', ...)). Its static attributes (the local flag) are the first block's; the scan
    passes each layer's own."""
    graphdef = nnx.graphdef(blocks[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in blocks])
    block = nnx.merge(graphdef, stacked)
    for _, var in nnx.state(block).flat_state():
        var.set_metadata(axes=(LAYERS, *var.get_metadata()['axes']))
    return block


def unstack_layers(state: nnx.State, num_layers: int) -> nnx.State:
    """A stacked model's state ('layers', ...) -> the unrolled layout ('layers', i, ...); other
    entries unchanged. Works on any state holding a Decoder's (its own, a backbone's)."""
    flat = {}
    for path, var in state.flat_state():
        path = tuple(path)
        at = path.index(LAYERS) + 1 if LAYERS in path else None
        if at is None or isinstance(path[at], int):  # no layers, or already one by one
            flat[path] = var
            continue
        axes = var.get_metadata()['axes'][1:]
        for i in range(num_layers):
            flat[path[:at] + (i,) + path[at:]] = var.replace(var[...][i], axes=axes)
    return nnx.State.from_flat_path(flat)


def stack_layers(state: nnx.State) -> nnx.State:
    """The inverse of `unstack_layers`: ('layers', i, ...) entries stacked into ('layers', ...)."""
    flat, groups = {}, {}
    for path, var in state.flat_state():
        path = tuple(path)
        if LAYERS in path and isinstance(path[path.index(LAYERS) + 1], int):
            at = path.index(LAYERS) + 1
            groups.setdefault(path[:at] + path[at + 1:], {})[path[at]] = var
        else:
            flat[path] = var
    for path, layers in groups.items():
        first = layers[0]
        value = jnp.stack([layers[i][...] for i in range(len(layers))])
        flat[path] = first.replace(value, axes=(LAYERS, *first.get_metadata()['axes']))
    return nnx.State.from_flat_path(flat)


@functools.lru_cache(maxsize=16)
def _unrolled_graphdef(cfg: ModelConfig, lm_head: bool):
    return nnx.graphdef(
        nnx.eval_shape(
            lambda: Decoder(cfg.replace(scan_layers=False), rngs=nnx.Rngs(0), lm_head=lm_head)))


def _remat_policy(cfg: ModelConfig):
    """The `jax.checkpoint` policy of `cfg.remat_policy` (None: save nothing but the input)."""
    policies = jax.checkpoint_policies
    if cfg.remat_policy == 'save_dots':
        return policies.dots_with_no_batch_dims_saveable
    if cfg.remat_policy == 'offload_dots':
        return policies.offload_dot_with_no_batch_dims('device', 'pinned_host')
    return None


class Decoder(nnx.Module):
    """Embedding, blocks, final norm; `lm_head=True` adds the output projection (or ties it)."""
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lm_head: bool = True):
        self.cfg = cfg
        pd = cfg.jnp_param_dtype
        self.embedding = param(rngs, (cfg.vocab_size, cfg.embed_dim), ('vocab', 'embed'), std=0.02,
                               dtype=pd)
        blocks = [Block(cfg, layer=i, rngs=rngs) for i in range(cfg.num_layers)]
        # Scanned: one Block whose parameters carry a leading layer axis (logical 'layers'), the
        # layout the scan runs over, with no stacking at call time. Unrolled: a list of blocks.
        self.layers = stack_blocks(blocks) if cfg.scan_layers else nnx.List(blocks)
        self.final_norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps, offset=cfg.norm_offset,
                                  param_dtype=pd)
        self.has_lm_head = lm_head
        if lm_head and not cfg.tie_embeddings:
            self.lm_head = param(rngs, (cfg.embed_dim, cfg.vocab_size), ('embed', 'vocab'),
                                 std=cfg.embed_dim**-0.5, dtype=pd)
        # An adapter on the output projection (tied or not) when cfg.lora_targets names it.
        self.lm_head_lora = lora.adapter_for(cfg, 'lm_head', (cfg.embed_dim,), ('embed',),
                                             (cfg.vocab_size,), ('vocab',), 'btd,dr->btr',
                                             'btr,rv->btv', rngs) if lm_head else None

    def hidden(self, tokens, *, positions, kv_mask, cache=None, cache_index=None):
        """Final-norm hidden states [B, T, D] and the updated cache (None without one).

        A cache is a list of per-layer {'k', 'v'} (`init_cache`: the sampler's, whose decode
        loop updates each layer's arrays in place; the blocks then run unrolled) or one stacked
        {'k', 'v'} of [L, ...] (`stack_cache`: scanned with the blocks, as the grouped scoring
        of training does)."""
        cfg = self.cfg
        x = jnp.take(self.embedding[...], tokens, axis=0).astype(cfg.jnp_dtype)
        # The lookup in the table's own layout first (rows over the data axis, the embedding
        # width over the table's fsdp axis): its backward then scatters each device's rows into
        # its own slice of the table's gradient, where the batch layout alone made the compiler
        # gather every row's cotangent and the whole [V, D] gradient on each device (8B DPO on
        # 256 chips, mesh (16, 16, 1): 1 GiB + 1 GiB).
        x = constrain(x, ('act_head_rows', 'length', 'embed'))
        if cfg.embed_scale:
            x = x * jnp.asarray(cfg.embed_dim**0.5, cfg.jnp_dtype)
        x = constrain(x, BTD)
        stacked_cache = isinstance(cache, dict)
        if cfg.scan_layers and not isinstance(cache, list):
            x, new_cache = self._scan_blocks(x, positions, kv_mask, cache, cache_index)
            return constrain(self.final_norm(x), BTD), new_cache
        if stacked_cache:
            cache = unstack_cache(cache)
        new_cache = [] if cache is not None else None

        # Functional (split state in, merged inside) so that jax.checkpoint applies to a model
        # merged outside the traced function too (a frozen reference inside value_and_grad).
        def run_block(graphdef, state, x, layer_cache, i):
            # Slices of the stacked block take their layer's flags; stored blocks hold their own.
            layer = _layer_flags(cfg, i) if cfg.scan_layers else None
            return nnx.merge(graphdef,
                             state)(x, positions=positions, kv_mask=kv_mask, cache=layer_cache,
                                    cache_index=cache_index, layer=layer)

        if cfg.remat:
            run_block = jax.checkpoint(run_block, policy=_remat_policy(cfg), static_argnums=(0, 4))
        for i, (graphdef, state) in enumerate(self._each_block()):
            x, layer_cache = run_block(graphdef, state, x, None if cache is None else cache[i], i)
            if cache is not None:
                new_cache.append(layer_cache)
        if stacked_cache:
            new_cache = stack_cache(new_cache)
        return constrain(self.final_norm(x), BTD), new_cache

    def _each_block(self):
        """(graphdef, state) of each layer's block in order: the stored blocks, or slices of
        the stacked one."""
        if not self.cfg.scan_layers:
            yield from (nnx.split(block) for block in self.layers)
            return
        graphdef, state = nnx.split(self.layers)
        for i in range(self.cfg.num_layers):
            yield graphdef, jax.tree.map(lambda x: x[i], state)

    def _scan_blocks(self, x, positions, kv_mask, cache, cache_index):
        """The stacked blocks under one `lax.scan`, each layer's local/global flag and RoPE
        frequencies scanned beside its parameters, and a stacked cache ({'k', 'v'} of [L, ...],
        `stack_cache`) scanned in and out."""
        cfg = self.cfg
        graphdef, params = nnx.split(self.layers)
        flags = [_layer_flags(cfg, i) for i in range(cfg.num_layers)]
        local = jnp.asarray([f[0] for f in flags])
        inv_freq = jnp.stack([f[1] for f in flags])

        def body(x, xs):
            state, flag, freq, layer_cache = xs
            block = nnx.merge(graphdef, state)
            x, layer_cache = block(x, positions=positions, kv_mask=kv_mask, cache=layer_cache,
                                   cache_index=cache_index, layer=(flag, freq))
            return x, layer_cache

        if cfg.remat:
            body = jax.checkpoint(body, policy=_remat_policy(cfg), prevent_cse=False)
        x, new_cache = jax.lax.scan(body, x, (params, local, inv_freq, cache),
                                    unroll=cfg.layers_per_scan_step)
        return x, new_cache

    def unstacked(self) -> 'Decoder':
        """This decoder with its layers stored one by one (itself if they already are). The
        sampler's decode loop runs the layers unrolled, each on its own arrays: slicing the
        stacked ones inside the loop would copy every layer's weights at every step, so it
        slices once, before the loop."""
        if not self.cfg.scan_layers:
            return self
        graphdef = _unrolled_graphdef(self.cfg, self.has_lm_head)
        return nnx.merge(graphdef, unstack_layers(nnx.state(self), self.cfg.num_layers))

    def output_weight(self) -> jax.Array:
        """The output projection [D, V] in the compute dtype (the embedding's transpose if tied),
        with its adapter folded in when it has one."""
        dt = self.cfg.jnp_dtype
        w = self.embedding[...].T if self.cfg.tie_embeddings else self.lm_head[...]
        if self.lm_head_lora is None:
            return w.astype(dt)
        # Merged on the fly, in float32 (every path through the head, the vocabulary-parallel
        # ones included, uses this weight); no dropout on this adapter.
        return (w.astype(jnp.float32) + lora.delta(self.lm_head_lora)).astype(dt)

    def logits(self, h: jax.Array) -> jax.Array:
        """Output logits in float32, soft-capped if configured."""
        out = jnp.einsum('...d,dv->...v', h.astype(self.cfg.jnp_dtype), self.output_weight(),
                         preferred_element_type=jnp.float32)
        if out.ndim == 3:
            out = constrain(out, ('batch', 'length', 'act_vocab'))
        return softcap(out, self.cfg.final_logit_softcap)

    def __call__(self, tokens, mask=None, *, positions=None, kv_mask=None, cache=None,
                 cache_index=None):
        """Language-model logits [B, T, V]; returns (logits, cache) when a cache is given."""
        if mask is None:
            mask = jnp.ones(tokens.shape, jnp.int32)
        positions = positions_from_mask(mask) if positions is None else positions
        kv_mask = mask if kv_mask is None else kv_mask
        h, cache_out = self.hidden(tokens, positions=positions, kv_mask=kv_mask, cache=cache,
                                   cache_index=cache_index)
        logits = self.logits(h)
        return (logits, cache_out) if cache is not None else logits


class ValueModel(nnx.Module):
    """Per-token scalar values (the PPO critic): values[B, T]."""
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.backbone = Decoder(cfg, rngs=rngs, lm_head=False)
        self.value_head = param(rngs, (cfg.embed_dim, 1), ('embed', None), std=0.0,
                                dtype=cfg.jnp_param_dtype)
        self.value_bias = param(rngs, (1,), (None,), std=0.0, dtype=cfg.jnp_param_dtype)

    def __call__(self, tokens, mask):
        h, _ = self.backbone.hidden(tokens, positions=positions_from_mask(mask), kv_mask=mask)
        v = h.astype(jnp.float32) @ self.value_head[...].astype(jnp.float32)
        return v[..., 0] + self.value_bias[...].astype(jnp.float32)[0]


class RewardModel(nnx.Module):
    """Scalar rewards read at the last real token: rewards[B, K] for an ensemble of K heads."""
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, num_heads: int = 1):
        self.backbone = Decoder(cfg, rngs=rngs, lm_head=False)
        self.reward_head = param(rngs, (cfg.embed_dim, num_heads), ('embed', None),
                                 std=cfg.embed_dim**-0.5, dtype=cfg.jnp_param_dtype)
        self.reward_bias = param(rngs, (num_heads,), (None,), std=0.0, dtype=cfg.jnp_param_dtype)

    def __call__(self, tokens, mask):
        h, _ = self.backbone.hidden(tokens, positions=positions_from_mask(mask), kv_mask=mask)
        last = jnp.take_along_axis(h, last_token_index(mask)[:, None, None], axis=1)[:, 0]
        return (last.astype(jnp.float32) @ self.reward_head[...].astype(jnp.float32)
                + self.reward_bias[...].astype(jnp.float32))


class RewardEnsemble(nnx.Module):
    """K reward models initialised from different seeds: rewards[B, K] (one column each)."""
    def __init__(self, cfg: ModelConfig, *, seeds: tuple[int, ...]):
        self.members = nnx.List([RewardModel(cfg, rngs=nnx.Rngs(s)) for s in seeds])

    def __call__(self, tokens, mask):
        return jnp.concatenate([m(tokens, mask) for m in self.members], axis=-1)


class PreferenceModel(nnx.Module):
    """Pairwise preference logit, antisymmetric by construction.

    Each (prompt, response) sequence is embedded once (its final-norm state at the last real
    token); the logit is g(a, b) - g(b, a) with g(a, b) = w . silu(A a + B b + c), so
    P(a > b) = sigmoid(logit) satisfies P(a > b) + P(b > a) = 1 exactly and can represent cycles
    that no scalar reward can.
    """
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, hidden_dim: int | None = None):
        d, pd = cfg.embed_dim, cfg.jnp_param_dtype
        f = hidden_dim or 2 * d
        self.backbone = Decoder(cfg, rngs=rngs, lm_head=False)
        self.pair_first = param(rngs, (d, f), ('embed', None), std=d**-0.5, dtype=pd)
        self.pair_second = param(rngs, (d, f), ('embed', None), std=d**-0.5, dtype=pd)
        self.pair_bias = param(rngs, (f,), (None,), std=0.0, dtype=pd)
        self.pair_out = param(rngs, (f,), (None,), std=f**-0.5, dtype=pd)

    def embed(self, tokens, mask):
        h, _ = self.backbone.hidden(tokens, positions=positions_from_mask(mask), kv_mask=mask)
        return jnp.take_along_axis(h, last_token_index(mask)[:, None, None], axis=1)[:, 0]

    def score(self, ea, eb):
        """g(a, b) on embeddings [B, D]."""
        f32 = lambda p: p[...].astype(jnp.float32)
        z = ea.astype(jnp.float32) @ f32(self.pair_first) + eb.astype(jnp.float32) @ f32(
            self.pair_second) + f32(self.pair_bias)
        return jax.nn.silu(z) @ f32(self.pair_out)

    def __call__(self, tokens_a, mask_a, tokens_b, mask_b):
        """Logit of P(a > b), shape [B]."""
        ea, eb = self.embed(tokens_a, mask_a), self.embed(tokens_b, mask_b)
        return self.score(ea, eb) - self.score(eb, ea)


def twin(model: nnx.Module, cfg: ModelConfig):
    """(graphdef, abstract state) of a model of `model`'s class and head sizes on another config
    (another adapter config: `cfg.lora_*`)."""
    if isinstance(model, Decoder):
        make = lambda: Decoder(cfg, rngs=nnx.Rngs(0), lm_head=model.has_lm_head)
    elif isinstance(model, ValueModel):
        make = lambda: ValueModel(cfg, rngs=nnx.Rngs(0))
    elif isinstance(model, RewardModel):
        make = lambda: RewardModel(cfg, rngs=nnx.Rngs(0), num_heads=model.reward_head.shape[-1])
    elif isinstance(model, RewardEnsemble):
        make = lambda: RewardEnsemble(cfg, seeds=tuple(range(len(model.members))))
    elif isinstance(model, PreferenceModel):
        make = lambda: PreferenceModel(cfg, rngs=nnx.Rngs(0), hidden_dim=model.pair_first.shape[-1])
    else:
        raise ValueError(f'{type(model).__name__} is not one of the models built on a Decoder')
    return nnx.split(nnx.eval_shape(make))


def config_of(model: nnx.Module) -> ModelConfig:
    """The decoder config of a Decoder or of a model built on one."""
    if isinstance(model, RewardEnsemble):
        return model.members[0].backbone.cfg
    return model.cfg if isinstance(model, Decoder) else model.backbone.cfg


def base_model(model: nnx.Module) -> nnx.Module:
    """`model` with its adapters switched off: a model of the same class without adapters whose
    arrays are `model`'s base arrays, not copies (`models/lora.py`). What the frozen reference of
    an adapted policy is."""
    graphdef, _ = twin(model, config_of(model).replace(lora_rank=0))
    return nnx.merge(graphdef, nnx.state(model, nnx.Param))


def merged_model(model: nnx.Module) -> nnx.Module:
    """`model` with its adapters folded into the base weights (W + scale A B), as a model without
    adapters: what a merged export (`interop.save_hf`) writes."""
    graphdef, _ = twin(model, config_of(model).replace(lora_rank=0))
    return nnx.merge(graphdef, lora.merged_params(model))


def quantized_model(model: nnx.Module) -> nnx.Module:
    """`model` (full precision, its base loaded) with its projections stored int8
    (`models/quant.py`): a new module of the same class on `base_quant='int8'`; adapters and
    heads carried over unchanged."""
    cfg = config_of(model)
    graphdef, _ = twin(model, cfg.replace(base_quant='int8'))
    values = nnx.to_pure_dict(nnx.state(model))
    quant.quantize_values(values.get('backbone', values), stacked=cfg.scan_layers)
    return nnx.merge(graphdef, values)
