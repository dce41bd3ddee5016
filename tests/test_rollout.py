"""The online batch source: layout, agreement with the sampler and teacher forcing, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignjax import rollout as rollout_lib
from alignjax import sampling
from alignjax import sharding
from alignjax.data import pipeline
from alignjax.data import synthetic
from alignjax.data.tokenizer import ByteTokenizer
from alignjax.losses import reward as reward_losses
from alignjax.models import Decoder, RewardModel, ValueModel, scoring
from alignjax.models.config import get_model_config

TOK = ByteTokenizer()
CFG = get_model_config('tiny', vocab_size=TOK.vocab_size)
TASK = synthetic.get_task('transitive')
K = 3


@pytest.fixture(scope='module')
def setup():
    mesh = sharding.make_mesh((1, 1, 1))
    with jax.set_mesh(mesh):
        policy = Decoder(CFG, rngs=nnx.Rngs(0))
        reference = Decoder(CFG, rngs=nnx.Rngs(1))
        critic = ValueModel(CFG, rngs=nnx.Rngs(2))
        critic.value_head[...] = jax.random.normal(jax.random.key(3), critic.value_head.shape)
    records = TASK.prompt_records(64, seed=0)
    tokenize = pipeline.make_tokenize_fn('prompt', TOK, max_prompt_len=8)
    stream = pipeline.batch_stream(records, tokenize_fn=tokenize, global_batch_size=4, seed=0)
    return mesh, policy, reference, critic, records, stream


def make_rollout(setup, scorer=None, **kw):
    mesh, _, reference, _, records, stream = setup
    config = rollout_lib.RolloutConfig(samples_per_prompt=K, max_new_tokens=10, **kw)
    return rollout_lib.Rollout(prompts=stream, records=records, tok=TOK, scorer=scorer
                               or rollout_lib.GoldScorer(TASK), reference=reference, config=config,
                               mesh=mesh, seed=5, task=TASK)


def test_rows_are_grouped_and_match_sampler_and_teacher_forcing(setup):
    mesh, policy, reference, critic, records, stream = setup
    with jax.set_mesh(mesh):
        b, m = make_rollout(setup)(7, policy, critic)
        pb = stream[7]
        np.testing.assert_array_equal(b.prompt, np.repeat(pb['prompt'], K, axis=0))
        texts = [records[int(i)]['prompt'] for i in pb['index'] for _ in range(K)]
        # The sampler, called directly with the step's key, draws the same responses.
        out = sampling.generate(policy, b.prompt, b.prompt_mask,
                                jax.random.fold_in(jax.random.key(5), 7),
                                sampling.SamplingConfig(max_new_tokens=10, prompt_bucket=8))
        np.testing.assert_array_equal(b.response, np.asarray(out['tokens']))
        np.testing.assert_array_equal(b.response_mask, np.asarray(out['mask']))
        np.testing.assert_allclose(b.old_logp, np.asarray(out['policy_logprobs']), atol=2e-5)
        args = (b.prompt, b.prompt_mask, b.response, b.response_mask)
        ref = scoring.response_logprobs(reference, *args)
        np.testing.assert_allclose(b.ref_logp, np.asarray(ref), atol=1e-5)
        values = scoring.response_values(critic, *args)
        np.testing.assert_allclose(b.old_values, np.asarray(values), rtol=1e-5, atol=1e-5)
    decoded = [TOK.decode(t) for t in b.response]
    np.testing.assert_allclose(b.scores, TASK.gold_rewards(texts, decoded), atol=1e-6)
    eos = np.array([TOK.eos_id in t[m > 0] for t, m in zip(b.response, b.response_mask)])
    np.testing.assert_array_equal(b.has_eos, eos)
    assert b.old_values[b.response_mask == 0].max(initial=0) == 0
    assert m['rollout/response_length'] == pytest.approx(b.response_mask.sum(1).mean())
    # The K samples of a prompt differ (they are samples, not copies).
    assert len({tuple(r) for r in b.response[:K]}) > 1


def test_same_step_same_batch_other_step_other_batch(setup):
    mesh, policy, _, _, _, _ = setup
    with jax.set_mesh(mesh):
        r = make_rollout(setup)
        (a, _), (b, _), (c, _) = r(3, policy), r(3, policy), r(4, policy)
    for k in ('response', 'old_logp', 'ref_logp', 'scores'):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.response, c.response)


def test_greedy_baseline_is_the_greedy_decode(setup):
    mesh, policy, _, _, records, stream = setup
    with jax.set_mesh(mesh):
        b, _ = make_rollout(setup, greedy_baseline=True)(2, policy)
        pb = stream[2]
        out = sampling.generate(
            policy, pb['prompt'], pb['prompt_mask'], jax.random.key(0),
            sampling.SamplingConfig(max_new_tokens=10, greedy=True, prompt_bucket=8))
    np.testing.assert_array_equal(b.greedy.response, np.asarray(out['tokens']))
    texts = [records[int(i)]['prompt'] for i in pb['index']]
    decoded = [TOK.decode(t) for t in np.asarray(out['tokens'])]
    np.testing.assert_allclose(b.greedy.scores, TASK.gold_rewards(texts, decoded), atol=1e-6)
    assert b.greedy.old_logp.shape == b.greedy.response.shape


@pytest.mark.parametrize('aggregate', ['mean', 'min', 'mean_minus_std'])
def test_reward_model_scorer_aggregates_members(setup, aggregate):
    mesh, policy, _, _, _, _ = setup
    with jax.set_mesh(mesh):
        rm = RewardModel(CFG, rngs=nnx.Rngs(4), num_heads=3)
        scorer = rollout_lib.RewardModelScorer(rm, mesh, aggregate=aggregate, lam=0.5)
        b, _ = make_rollout(setup, scorer=scorer)(1, policy)
        tokens = jnp.concatenate([b.prompt, b.response], axis=1)
        mask = jnp.concatenate([b.prompt_mask, b.response_mask], axis=1)
        members = np.asarray(rm(tokens, mask))
    expected = reward_losses.aggregate_ensemble(members, method=aggregate, lam=0.5)
    np.testing.assert_allclose(b.scores, np.asarray(expected), atol=1e-5)
    assert members.shape[1] == 3 and np.ptp(members, axis=1).max() > 0  # members disagree
