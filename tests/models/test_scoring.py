"""Teacher-forced scoring against the plain formula it optimises.

The reference is the textbook computation: logits over the whole concatenated sequence, a full
log-softmax, the response tokens' entries taken. `response_logprobs` (head on response positions,
logsumexp minus the target column's logit, optional chunks) and `grouped_response_logprobs` (the
prompt run once per group, responses attending to its cache) must agree with it in value and in
gradient, with padding, GQA, sliding windows, soft-caps, tied embeddings and bfloat16.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignjax import sharding
from alignjax.models import PRESETS, Decoder, scoring

TINY = PRESETS['tiny']
VARIANTS = {
    'tiny': TINY,
    'untied': dataclasses.replace(TINY, tie_embeddings=False),
    # Gemma-2-like: alternating sliding-window layers (window shorter than prompt + response),
    # both soft-caps, post-norms.
    'gemma2_like': dataclasses.replace(TINY, sliding_window=5, local_layer_period=2,
                                       attn_logit_softcap=20.0, final_logit_softcap=3.0,
                                       post_norms=True),
}


def reference_logprobs(model, prompt, prompt_mask, response, response_mask):
    """log-softmax of the full sequence's logits, the response tokens' entries, and entropies."""
    tokens = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    p, r = prompt.shape[1], response.shape[1]
    logits = model(tokens, mask)[:, p - 1:p - 1 + r]
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, response[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    m = response_mask.astype(jnp.float32)
    return logp * m, entropy * m


def make_batch(cfg, b=3, g=2, p=7, r=6, seed=0):
    """Left-padded prompts [B, P] (uneven lengths), G right-padded responses each [B, G, R]."""
    rng = np.random.RandomState(seed)
    prompt = rng.randint(3, cfg.vocab_size, (b, p)).astype(np.int32)
    prompt_mask = np.ones((b, p), np.int32)
    for i, n in enumerate([p, p - 3, 2][:b]):
        prompt_mask[i, :p - n] = 0
    responses = rng.randint(3, cfg.vocab_size, (b, g, r)).astype(np.int32)
    masks = np.ones((b, g, r), np.int32)
    masks[0, 1, 4:] = 0
    masks[1, 0, 1:] = 0
    masks[2, 1, 3:] = 0
    return prompt * prompt_mask, prompt_mask, responses * masks, masks


def model_of(cfg, seed=0):
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    # Larger embeddings than the init so that log-probs differ clearly between tokens.
    model.embedding.value = model.embedding.value * 20.0
    return model


def flat_rows(prompt, prompt_mask, responses, masks):
    g = responses.shape[1]
    rows = lambda x: np.repeat(x, g, axis=0)
    flat = lambda x: x.reshape(-1, x.shape[-1])
    return rows(prompt), rows(prompt_mask), flat(responses), flat(masks)


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_response_logprobs_and_entropy_match_the_full_log_softmax(name):
    cfg = VARIANTS[name]
    model = model_of(cfg)
    args = flat_rows(*make_batch(cfg))
    want_logp, want_ent = reference_logprobs(model, *args)
    for chunk in (None, 2, 4):  # one piece; positions dividing R=6; a ragged tail
        logp, ent = scoring.response_logprobs(model, *args, with_entropy=True, chunk=chunk)
        np.testing.assert_allclose(logp, want_logp, atol=2e-5, rtol=2e-5)
        np.testing.assert_allclose(ent, want_ent, atol=2e-5, rtol=2e-5)
    assert float(jnp.abs(want_logp).max()) > 1.0  # the check is not vacuous


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_grouped_scoring_equals_scoring_each_row(name):
    cfg = VARIANTS[name]
    model = model_of(cfg)
    prompt, prompt_mask, responses, masks = make_batch(cfg)
    want, want_ent = reference_logprobs(model, *flat_rows(prompt, prompt_mask, responses, masks))
    got, ent = scoring.grouped_response_logprobs(model, prompt, prompt_mask, responses, masks,
                                                 with_entropy=True)
    assert got.shape == responses.shape
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(ent.reshape(want.shape), want_ent, atol=2e-5, rtol=2e-5)


def test_gradients_of_all_three_paths_agree():
    cfg = VARIANTS['untied']
    graphdef, state = nnx.split(model_of(cfg))
    prompt, prompt_mask, responses, masks = make_batch(cfg)
    rows = flat_rows(prompt, prompt_mask, responses, masks)
    weights = jnp.asarray(np.random.RandomState(1).randn(*rows[2].shape), jnp.float32)

    def loss(kind):
        def f(s):
            model = nnx.merge(graphdef, s)
            if kind == 'reference':
                logp = reference_logprobs(model, *rows)[0]
            elif kind == 'chunked':
                logp = scoring.response_logprobs(model, *rows, chunk=5)
            else:
                logp = scoring.grouped_response_logprobs(model, prompt, prompt_mask, responses,
                                                         masks).reshape(weights.shape)
            return jnp.sum(weights * logp)

        return jax.jit(jax.grad(f))(state)

    want = loss('reference')
    for kind in ('chunked', 'grouped'):
        got = loss(kind)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(want)) > 1e-3


def test_bfloat16_grouped_scoring_stays_close_to_float32():
    cfg32 = VARIANTS['untied']
    cfg16 = dataclasses.replace(cfg32, dtype='bfloat16')
    batch = make_batch(cfg32)
    model32 = model_of(cfg32)
    model16 = Decoder(cfg16, rngs=nnx.Rngs(0))
    nnx.update(model16, nnx.state(model32))
    want = scoring.grouped_response_logprobs(model32, *batch)
    got = scoring.grouped_response_logprobs(model16, *batch)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=0.15, rtol=0.05)


def test_head_is_chunked_only_when_the_logits_would_be_large():
    # (rows, positions, vocab, chunk) -> positions per chunk; no mesh here: every row local.
    assert scoring._head_chunk(4, 256, 8192, None) is None
    assert scoring._head_chunk(4, 1024, 256_000, None) == scoring.MAX_LOGITS // (4 * 256_000)
    assert scoring._head_chunk(2, 100, 10, 40) == 40
    assert scoring._head_chunk(2, 100, 10, 100) is None


def _mesh(shape):
    return jax.make_mesh(shape, ('data', 'fsdp', 'tensor'),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 (simulated) devices')
def test_head_chunks_count_what_one_device_computes():
    """Under a mesh the head runs vocabulary-parallel over fsdp x tensor, its rows split over
    data only: a chunk is sized by one device's rows times its slice of the vocabulary."""
    with jax.set_mesh(_mesh((1, 8, 1))):
        assert scoring._vocab_parallel(256_000)
        assert scoring._head_chunk(64, 1024, 256_000, None) == scoring.MAX_LOGITS // (64 * 32_000)
        assert scoring._head_chunk(12, 1024, 256_000, None) == scoring.MAX_LOGITS // (12 * 32_000)
    with jax.set_mesh(_mesh((8, 1, 1))):  # pure data parallelism: rows split, vocabulary whole
        assert not scoring._vocab_parallel(256_000)
        assert scoring._head_chunk(64, 1024, 256_000, None) == scoring.MAX_LOGITS // (8 * 256_000)
        # 12 rows do not divide over 8 devices: replicated, every row on every device.
        assert scoring._head_chunk(12, 1024, 256_000, None) == scoring.MAX_LOGITS // (12 * 256_000)
    with jax.set_mesh(_mesh((2, 2, 2))):
        assert scoring._head_chunk(64, 1024, 256_000, None) == scoring.MAX_LOGITS // (32 * 64_000)
        # The gathered rows' hidden states count too, when wider than the vocabulary slice.
        assert scoring._head_chunk(64, 1024, 2048, None, 4096) == scoring.MAX_LOGITS // (32 * 4096)


def _sharded_scores(cfg, shape, rules=None, chunk=None):
    """Log-probs, entropies and the gradient of a weighted sum of both, on a mesh (None: one
    device), with the model's parameters placed by the rules."""
    model = model_of(cfg)
    rows = [jnp.asarray(x) for x in flat_rows(*make_batch(cfg, b=4, g=2))]
    weights = jnp.asarray(np.random.RandomState(1).randn(*rows[2].shape), jnp.float32)
    graphdef, state = nnx.split(model)

    def f(s, rows):
        logp, ent = scoring.response_logprobs(nnx.merge(graphdef, s), *rows, with_entropy=True,
                                              chunk=chunk)
        return jnp.sum(weights * logp) + 0.1 * jnp.sum(weights * ent), (logp, ent)

    run = jax.jit(jax.value_and_grad(f, has_aux=True))
    if shape is None:
        return run(state, rows)
    mesh = _mesh(shape)
    with jax.set_mesh(mesh), sharding.use_rules(rules):
        state = jax.device_put(state, sharding.state_shardings(state, mesh,
                                                               sharding.current_rules()))
        rows = [jax.device_put(x, sharding.batch_sharding(mesh, 2)) for x in rows]
        return run(state, rows)


@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 (simulated) devices')
@pytest.mark.parametrize('shape', [(1, 8, 1), (2, 2, 2), (1, 4, 2)])
@pytest.mark.parametrize('name', ['untied', 'gemma2_like'])
def test_vocabulary_parallel_head_equals_one_device(shape, name):
    """Values and gradients (soft-cap, tied and untied weights, entropies, chunks) of the
    vocabulary-parallel head equal the single-device head's."""
    cfg = dataclasses.replace(VARIANTS[name], vocab_size=512)  # divides over 8 devices
    with jax.set_mesh(_mesh(shape)):
        assert scoring._vocab_parallel(cfg.vocab_size)
    (want, want_aux), want_grad = _sharded_scores(cfg, None)
    (got, got_aux), got_grad = _sharded_scores(cfg, shape, chunk=3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((got_aux, got_grad)), jax.tree.leaves((want_aux, want_grad))):
        # float32 sums in another order, on gradients of magnitude up to ~15
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 (simulated) devices')
def test_vocabulary_parallel_head_never_holds_the_whole_weight():
    """Under FSDP a head that gathers its [D, V] weight (and reduces a whole gradient) needs
    temporaries of several times the weight; the vocabulary-parallel head a fraction of it. The
    rule `act_head_vocab -> None` restores the gathering head for comparison."""
    cfg = dataclasses.replace(TINY, vocab_size=32_768, embed_dim=256, tie_embeddings=False)
    graphdef, state = nnx.split(model_of(cfg))
    rng = np.random.RandomState(0)
    h = jnp.asarray(rng.randn(16, 8, cfg.embed_dim), jnp.float32)
    targets = jnp.asarray(rng.randint(0, cfg.vocab_size, (16, 8)), jnp.int32)
    weight_bytes = cfg.embed_dim * cfg.vocab_size * 4

    def temporaries(rules):
        def f(s, h, targets):
            return jnp.sum(
                scoring._head_logprobs(nnx.merge(graphdef, s), h, targets, jnp.ones_like(targets),
                                       with_entropy=False, chunk=None))

        mesh = _mesh((1, 8, 1))
        with jax.set_mesh(mesh), sharding.use_rules(rules):
            shard = sharding.state_shardings(state, mesh, sharding.current_rules())
            rows = sharding.batch_sharding(mesh, 2)
            return jax.jit(jax.grad(f),
                           in_shardings=(shard, sharding.batch_sharding(mesh, 3), rows)).lower(
                               state, h, targets).compile().memory_analysis().temp_size_in_bytes

    gathering = [list(r) for r in sharding.DEFAULT_RULES if r[0] != 'act_head_vocab']
    gathering.append(['act_head_vocab', None])
    old, new = temporaries(gathering), temporaries(None)
    assert old > 2 * weight_bytes, (old, weight_bytes)
    assert new < weight_bytes / 4, (new, weight_bytes)


def test_rows_in_contiguous_groups_are_scored_once_per_prompt_and_equal_row_scoring():
    cfg = VARIANTS['untied']
    model = model_of(cfg)
    rows = flat_rows(*make_batch(cfg, g=3))  # 9 rows, groups of 3 share a prompt
    want = reference_logprobs(model, *rows)
    for group in (3, 1, 2):  # grouped; ungrouped; 9 rows do not split in 2s: row by row
        logp, ent = scoring.rows_response_logprobs(model, *rows, group=group, with_entropy=True)
        np.testing.assert_allclose(logp, want[0], atol=2e-5, rtol=2e-5)
        np.testing.assert_allclose(ent, want[1], atol=2e-5, rtol=2e-5)
    # The prompts' embeddings are looked up for 3 rows, not 9.
    jaxpr = str(
        jax.make_jaxpr(lambda *a: scoring.rows_response_logprobs(model, *a, group=3))(*rows))
    assert 'f32[3,7,64]' in jaxpr and 'f32[9,7,64]' not in jaxpr
