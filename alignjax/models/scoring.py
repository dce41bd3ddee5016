"""Teacher-forced scoring of responses: the bridge from models to the pure losses.

Batches hold a left-padded prompt [B, P] and a right-padded response [B, R]; the model sees their
concatenation, and the hidden states at positions P-1 .. P+R-2 predict the response tokens.

What makes scoring cheap, in the order it matters (`benchmarks/dpo.py` measures it):
- The output head runs on those R positions only, never on the prompt's.
- log pi(y_t) = z[y_t] - logsumexp(z): the chosen logit is the dot product of the hidden state
  with the token's output column, so no [N, V] log-softmax is materialised and its backward is
  no [N, V] scatter; with `chunk` tokens a chunk (and recomputation in the backward) the [N, V]
  logits never exist at once, which 128k-256k vocabularies need. Chunks cut response positions,
  never rows, so the batch stays sharded through the head.
- Several responses to one prompt (`grouped_response_logprobs`: DPO's chosen and rejected, a
  GRPO group) run the prompt through the model once and attend to its cached keys and values.
  Rows stay grouped by prompt ([B, G] flattened prompt-major), so a batch sharded over rows
  needs no communication to share a prompt.

The other heads score the same layout: `chosen_rejected_rewards` (a reward model or ensemble on a
preference batch's two responses, one forward pass), `pair_logits` (a pairwise preference model,
one backbone pass) and `response_values` (a critic's V(x, y_<t) at the response positions).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from alignjax import sharding
from alignjax.models.layers import softcap
from alignjax.models.transformer import init_cache, positions_from_mask, stack_cache

# Per-device elements of the [rows, positions, V] float32 logits above which the output head runs
# in chunks of response positions (256 MiB a device); below it the head runs in one piece.
MAX_LOGITS = 1 << 26


def _shards(name: str, size: int) -> int:
    """Devices a dimension of logical `name` and `size` is split over under the current mesh and
    rules (1 without a mesh, or when it does not divide)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    spec = sharding.logical_to_spec((name,), (size,), mesh, sharding.current_rules())[0]
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    return math.prod(mesh.shape[a] for a in axes)


def _vocab_parallel(vocab: int) -> bool:
    """Whether the head runs vocabulary-parallel: its vocabulary split over the devices of the
    rules' `act_head_vocab` (by default the weight's own axes, fsdp and tensor)."""
    return _shards('act_head_vocab', vocab) > 1


def _head_chunk(rows: int, positions: int, vocab: int, chunk: int | None,
                embed: int = 0) -> int | None:
    """Response positions per chunk of the head, or None for one piece."""
    if chunk is not None:
        return chunk if 0 < chunk < positions else None
    if _vocab_parallel(vocab):
        # Every device holds its slice of the vocabulary for all the rows it gathers, and the
        # gathered hidden states [rows, chunk, D] (their gradient in float32): both bounded.
        gathered = max(1, rows // _shards('act_head_rows', rows))
        local = gathered * max(vocab // _shards('act_head_vocab', vocab), embed)
    else:
        local = max(1, rows // _shards('batch', rows)) * vocab
    if local * positions <= MAX_LOGITS:
        return None
    return max(1, MAX_LOGITS // local)


def _token_logprobs(model, h, targets, with_entropy: bool):
    """log pi(targets) [M, C] (and the entropy) from final hidden states h [M, C, D]."""
    cfg = model.cfg
    w = model.output_weight()  # [D, V] in the compute dtype
    h = h.astype(cfg.jnp_dtype)
    if _vocab_parallel(cfg.vocab_size):
        return _vocab_parallel_logprobs(cfg, h, w, targets, with_entropy)
    # Rows and positions flattened (rows major, so the batch sharding carries over): XLA:CPU ran
    # the backward of the [M, C, D] x [D, V] form 1.8x slower than this one (tiny DPO's head).
    m, c = targets.shape
    h, targets = h.reshape(m * c, h.shape[-1]), targets.reshape(m * c)
    logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
    logits = softcap(sharding.constrain(logits, ('batch', 'act_vocab')), cfg.final_logit_softcap)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # The target's logit from its own output column: a gather of M * C columns, not of the
    # [M * C, V] logits (whose backward would scatter into a zero array of that size).
    picked = jnp.einsum('nd,nd->n', h,
                        jnp.take(w, targets, axis=1).T, preferred_element_type=jnp.float32)
    logp = (softcap(picked, cfg.final_logit_softcap) - lse).reshape(m, c)
    if not with_entropy:
        return logp, None
    probs = jnp.exp(logits - lse[..., None])
    return logp, (lse - jnp.sum(probs * logits, axis=-1)).reshape(m, c)


def _vocab_parallel_logprobs(cfg, h, w, targets, with_entropy: bool):
    """`_token_logprobs` with the vocabulary split over devices (`act_head_vocab`) and the rows
    gathered (`act_head_rows`): each device keeps its own slice of the output weight and computes
    the logits of every row for its slice of the vocabulary. No device ever holds the whole
    [D, V] weight or its gradient (an FSDP head would gather both: 3 GiB a device for Llama-3's
    128k vocabulary in bfloat16); what moves instead is one chunk of hidden states (and, in the
    backward, their gradient) and the [M, C] partial sums of the log-sum-exp."""
    rows = ('act_head_rows', 'length')
    h = sharding.constrain(h, (*rows, 'act_embed'))
    w = sharding.constrain(w, ('act_embed', 'act_head_vocab'))
    logits = jnp.einsum('mcd,dv->mcv', h, w, preferred_element_type=jnp.float32)
    logits = softcap(sharding.constrain(logits, (*rows, 'act_head_vocab')), cfg.final_logit_softcap)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # The target's logit picked on the device that holds its column (a masked sum, whose
    # backward is a select: no gather from a sharded weight and no [M, C, V] scatter).
    hit = jnp.arange(cfg.vocab_size, dtype=targets.dtype) == targets[..., None]
    picked = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    back = lambda x: sharding.constrain(x, ('batch', 'length'))
    logp = back(picked - lse)
    if not with_entropy:
        return logp, None
    probs = jnp.exp(logits - lse[..., None])
    return logp, back(lse - jnp.sum(probs * logits, axis=-1))


def next_token_logits(model, h):
    """Float32 logits [B, V] of the next token from the last hidden states [B, 1, D]: the
    sampler's head. Vocabulary-parallel like the scoring passes when the rules split the
    vocabulary, so that a decode step never gathers the whole [D, V] weight on a device (Llama-3
    8B: 1 GiB in bfloat16, in every step's loop body); each device computes every gathered row's
    logits for its slice of the vocabulary, and the sampling reductions run on the slices."""
    cfg = model.cfg
    if not _vocab_parallel(cfg.vocab_size):
        return model.logits(h)[:, 0]
    h = sharding.constrain(h[:, 0].astype(cfg.jnp_dtype), ('act_head_rows', 'act_embed'))
    w = sharding.constrain(model.output_weight(), ('act_embed', 'act_head_vocab'))
    logits = jnp.einsum('bd,dv->bv', h, w, preferred_element_type=jnp.float32)
    return softcap(sharding.constrain(logits, ('act_head_rows', 'act_head_vocab')),
                   cfg.final_logit_softcap)


def _head_logprobs(model, h, targets, mask, *, with_entropy: bool, chunk: int | None):
    """Per-token log-probs (and entropies) [..., R] of `targets` given hidden states [..., R, D].

    Rows keep their (sharded) batch layout; chunks, when the logits are too large, cut the
    response positions, so that every device computes its own rows' chunk at once and no row
    ever moves between devices.
    """
    lead = targets.shape
    r = lead[-1]
    h = h.reshape(-1, r, h.shape[-1])
    targets = targets.reshape(-1, r)
    rows = targets.shape[0]
    size = _head_chunk(rows, r, model.cfg.vocab_size, chunk, model.cfg.embed_dim)
    if size is None:
        logp, ent = _token_logprobs(model, h, targets, with_entropy)
    else:
        pad = -r % size
        n = (r + pad) // size
        hc = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(rows, n, size, h.shape[-1])
        tc = jnp.pad(targets, ((0, 0), (0, pad))).reshape(rows, n, size)
        # Rematerialised per chunk: the backward recomputes one chunk's logits at a time.
        one = jax.checkpoint(lambda x: _token_logprobs(model, x[0], x[1], with_entropy))
        logp, ent = jax.lax.map(one, (jnp.moveaxis(hc, 1, 0), jnp.moveaxis(tc, 1, 0)))
        unchunk = lambda x: jnp.moveaxis(x, 0, 1).reshape(rows, n * size)[:, :r]
        logp = unchunk(logp)
        ent = None if ent is None else unchunk(ent)
    m = mask.astype(jnp.float32)
    logp = logp.reshape(lead) * m
    return logp if not with_entropy else (logp, ent.reshape(lead) * m)


def response_topk_stats(model, prompt, prompt_mask, response, response_mask, *, k: int,
                        chunk: int | None = None):
    """Per-token top-k mass and top-k entropy [B, R] (zero on padding) of the model's next-token
    distribution at each response position: mass = sum of the k largest probabilities, entropy
    that of the k renormalised: the early-warning indicators of over-optimisation of
    "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms" (Shi et al.
    2024). The logits are made a chunk of response positions at a time when one device's
    [B, R, V] would exceed `MAX_LOGITS` elements (as the log-prob passes do; `chunk` forces a
    size), so a large vocabulary's long rollouts fit."""
    h = response_hidden(model, prompt, prompt_mask, response, response_mask)

    def stats(hc):
        logits = model.logits(hc)
        top, _ = jax.lax.top_k(logits, k)
        logz = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        mass = jnp.sum(jnp.exp(top - logz), axis=-1)
        entropy = -jnp.sum(jax.nn.softmax(top, axis=-1) * jax.nn.log_softmax(top, axis=-1), axis=-1)
        return mass, entropy

    rows, r = response.shape
    size = _head_chunk(rows, r, model.cfg.vocab_size, chunk, model.cfg.embed_dim)
    if size is None:
        mass, entropy = stats(h)
    else:
        n = -(-r // size)
        hc = jnp.pad(h, ((0, 0), (0, n * size - r), (0, 0))).reshape(rows, n, size, h.shape[-1])
        mass, entropy = jax.lax.map(stats, jnp.moveaxis(hc, 1, 0))
        unchunk = lambda x: jnp.moveaxis(x, 0, 1).reshape(rows, n * size)[:, :r]
        mass, entropy = unchunk(mass), unchunk(entropy)
    m = response_mask.astype(jnp.float32)
    return mass * m, entropy * m


def response_hidden(model, prompt, prompt_mask, response, response_mask):
    """Final hidden states [B, R, D] at the positions that predict each response token."""
    tokens = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    p = prompt.shape[1]
    h, _ = model.hidden(tokens, positions=positions_from_mask(mask), kv_mask=mask)
    return h[:, p - 1:p - 1 + response.shape[1]]


def sequence_logits(model, prompt, prompt_mask, response, response_mask):
    """Logits [B, R, V] (float32) that predict each response token."""
    return model.logits(response_hidden(model, prompt, prompt_mask, response, response_mask))


def response_logprobs(model, prompt, prompt_mask, response, response_mask, *,
                      with_entropy: bool = False, chunk: int | None = None):
    """Per-token log pi(y_t | x, y_<t) [B, R], zero on padding; optionally the entropy too.

    `chunk`: response positions per piece of the output head (default: one piece unless one
    device's logits would exceed `MAX_LOGITS` elements).
    """
    h = response_hidden(model, prompt, prompt_mask, response, response_mask)
    return _head_logprobs(model, h, response, response_mask, with_entropy=with_entropy, chunk=chunk)


def grouped_response_hidden(model, prompt, prompt_mask, responses, response_masks):
    """Like `response_hidden` for G responses to each prompt: prompt [B, P], responses [B, G, R]
    -> [B, G, R, D]. The prompt runs once; each response attends to its cached keys/values."""
    b, p = prompt.shape
    g, r = responses.shape[1:]
    cache = stack_cache(init_cache(model.cfg, b, p))  # [L, B * kv, P, hd]: scanned with the blocks
    h_prompt, cache = model.hidden(prompt, positions=positions_from_mask(prompt_mask),
                                   kv_mask=prompt_mask, cache=cache, cache_index=0)
    rows = lambda x: jnp.repeat(x, g, axis=0)  # [B, ...] -> [B * G, ...], prompt-major
    flat = lambda x: x.reshape(b * g, *x.shape[2:])
    mask = jnp.concatenate([rows(prompt_mask), flat(response_masks)], axis=1)

    def grow(x):  # a prompt cache [L, B * kv, P, hd] -> every response's [L, B * G * kv, P + R, hd]
        layers = x.shape[0]
        x = jnp.repeat(x.reshape(layers, b, -1, *x.shape[2:]), g, axis=1)  # prompt-major rows
        return jnp.pad(x.reshape(layers, -1, *x.shape[3:]), ((0, 0), (0, 0), (0, r), (0, 0)))

    grown = {k: grow(v) for k, v in cache.items()}
    h, _ = model.hidden(flat(responses), positions=positions_from_mask(mask)[:, p:], kv_mask=mask,
                        cache=grown, cache_index=p)
    h = jnp.concatenate([rows(h_prompt[:, -1:]), h[:, :-1]], axis=1)
    return h.reshape(b, g, r, h.shape[-1])


def grouped_response_logprobs(model, prompt, prompt_mask, responses, response_masks, *,
                              with_entropy: bool = False, chunk: int | None = None):
    """`response_logprobs` of G responses per prompt ([B, G, R] -> [B, G, R]), the prompt's
    forward pass shared by its G responses; equal to scoring each (prompt, response) row."""
    h = grouped_response_hidden(model, prompt, prompt_mask, responses, response_masks)
    return _head_logprobs(model, h, responses, response_masks, with_entropy=with_entropy,
                          chunk=chunk)


def rows_response_logprobs(model, prompt, prompt_mask, response, response_mask, *, group: int,
                           with_entropy: bool = False):
    """`response_logprobs` of flat rows [N, ...] laid out in contiguous groups of `group` rows
    that share a prompt (a rollout's samples of one prompt): each prompt runs once. Rows that do
    not split into groups are scored one by one."""
    n, r = response.shape
    if group == 1 or n % group:
        return response_logprobs(model, prompt, prompt_mask, response, response_mask,
                                 with_entropy=with_entropy)
    first = lambda x: x.reshape(n // group, group, x.shape[1])[:, 0]
    groups = lambda x: x.reshape(n // group, group, r)
    out = grouped_response_logprobs(model, first(prompt), first(prompt_mask), groups(response),
                                    groups(response_mask), with_entropy=with_entropy)
    return jax.tree.map(lambda x: x.reshape(n, r), out)


def pair_tokens(batch, first: str, second: str):
    """[2B, P+R] tokens and mask: (prompt, first) rows, then (prompt, second) rows."""
    prompt = jnp.concatenate([batch['prompt'], batch['prompt']], axis=0)
    prompt_mask = jnp.concatenate([batch['prompt_mask'], batch['prompt_mask']], axis=0)
    response = jnp.concatenate([batch[first], batch[second]], axis=0)
    response_mask = jnp.concatenate([batch[f'{first}_mask'], batch[f'{second}_mask']], axis=0)
    return (jnp.concatenate([prompt, response],
                            axis=1), jnp.concatenate([prompt_mask, response_mask], axis=1))


def chosen_rejected_rewards(model, batch):
    """Member rewards [B, K] of the chosen and the rejected responses (one forward pass)."""
    tokens, mask = pair_tokens(batch, 'chosen', 'rejected')
    rewards = model(tokens, mask)
    b = batch['prompt'].shape[0]
    return rewards[:b], rewards[b:]


def pair_logits(model, batch):
    """(logit(chosen, rejected), logit(rejected, chosen)), each [B], from one backbone pass."""
    tokens, mask = pair_tokens(batch, 'chosen', 'rejected')
    e = model.embed(tokens, mask)
    b = batch['prompt'].shape[0]
    ec, er = e[:b], e[b:]
    return model.score(ec, er) - model.score(er, ec), model.score(er, ec) - model.score(ec, er)


def response_values(critic, prompt, prompt_mask, response, response_mask):
    """Critic values V(x, y_<t) [B, R] at the positions that predict each response token."""
    tokens = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    p = prompt.shape[1]
    values = critic(tokens, mask)[:, p - 1:p - 1 + response.shape[1]]
    return values * response_mask.astype(jnp.float32)
