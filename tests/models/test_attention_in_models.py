"""The blockwise attention kernel inside the models (`model.attention`): the same logits,
gradients, grouped scores and samples as the dense attention, on Gemma-2-like layers (sliding
windows on alternate layers, attention soft-cap, GQA), scanned and unrolled, with padding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignjax import sampling
from alignjax.models import PRESETS, Decoder, attention, layers, scoring
from alignjax.models.config import ATTENTION_THRESHOLD

CFG = dataclasses.replace(PRESETS['tiny'], num_layers=3, sliding_window=5, local_layer_period=2,
                          attn_logit_softcap=20.0, num_heads=4, num_kv_heads=2)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of 4 so that a 14-token batch spans several query and key blocks."""
    monkeypatch.setattr(layers.attention_lib, 'attention',
                        functools.partial(attention.attention, block_q=4, block_k=4))


def _batch(cfg, b=3, t=14, seed=0):
    rng = np.random.RandomState(seed)
    tokens = rng.randint(3, cfg.vocab_size, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    mask[1, :4] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    return jnp.asarray(tokens * mask), jnp.asarray(mask)


def _models(scan):
    dense = Decoder(CFG.replace(scan_layers=scan, attention='xla'), rngs=nnx.Rngs(0))
    blockwise = Decoder(CFG.replace(scan_layers=scan, attention='blockwise'), rngs=nnx.Rngs(0))
    return dense, blockwise


@pytest.mark.parametrize('scan', [True, False])
def test_blockwise_logits_and_gradients_equal_dense(scan):
    tokens, mask = _batch(CFG)
    real = np.asarray(mask, bool)

    def loss_and_grad(model):
        graphdef, state = nnx.split(model)
        f = lambda s: jnp.sum(
            jnp.where(mask[..., None],
                      nnx.merge(graphdef, s)(tokens, mask), 0.0)**2) * 1e-3
        return jax.jit(jax.value_and_grad(f))(state)

    dense, blockwise = _models(scan)
    np.testing.assert_allclose(
        np.asarray(blockwise(tokens, mask))[real],
        np.asarray(dense(tokens, mask))[real], atol=1e-5, rtol=1e-5)
    (l0, g0), (l1, g1) = loss_and_grad(dense), loss_and_grad(blockwise)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-4)


def test_blockwise_grouped_scoring_and_sampling_equal_dense():
    """Through the KV cache: the prompt run once and G responses attending to its keys (the
    DPO / GRPO scoring path), and the sampler's prefill."""
    dense, blockwise = _models(True)
    prompt, prompt_mask = _batch(CFG, t=9)
    responses = jnp.asarray(np.random.RandomState(1).randint(3, CFG.vocab_size, (3, 2, 6)))
    masks = jnp.ones((3, 2, 6), jnp.int32).at[0, 1, 4:].set(0)
    scores = [
        scoring.grouped_response_logprobs(m, prompt, prompt_mask, responses, masks)
        for m in (dense, blockwise)
    ]
    np.testing.assert_allclose(np.asarray(scores[1]), np.asarray(scores[0]), atol=1e-5)
    config = sampling.SamplingConfig(max_new_tokens=6, greedy=True, prompt_bucket=1)
    out = [
        sampling.generate(m, prompt, prompt_mask, jax.random.key(0), config)
        for m in (dense, blockwise)
    ]
    np.testing.assert_array_equal(np.asarray(out[1]['tokens']), np.asarray(out[0]['tokens']))
    np.testing.assert_allclose(np.asarray(out[1]['logprobs']), np.asarray(out[0]['logprobs']),
                               atol=1e-5)


def test_auto_turns_blockwise_at_the_threshold_and_never_for_one_query():
    attn = Decoder(CFG, rngs=nnx.Rngs(0)).layers.attn
    assert attn._kernel(ATTENTION_THRESHOLD - 1, ATTENTION_THRESHOLD - 1) == 'xla'
    assert attn._kernel(ATTENTION_THRESHOLD, ATTENTION_THRESHOLD) == 'blockwise'
    assert attn._kernel(1, 4 * ATTENTION_THRESHOLD) == 'xla'  # a decode step
    with pytest.raises(ValueError, match='model.attention must be one of'):
        CFG.replace(attention='flash')
