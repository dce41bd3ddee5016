"""Generation sharding: the sampler on its own mesh gives the rollouts of the training sharding.

The policy lives FSDP-sharded on an 8-device training mesh; rollouts sampled after an explicit
reshard to a tensor-parallel or a data-replicated mesh must draw the same tokens with the same
log-probs (only float summation order may differ), and report the reshard's time.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from alignjax import resharding
from alignjax import rollout as rollout_lib
from alignjax import sharding
from alignjax.data import pipeline
from alignjax.data import synthetic
from alignjax.data.tokenizer import ByteTokenizer
from alignjax.models import Decoder
from alignjax.models.config import get_model_config

TOK = ByteTokenizer()
# Heads, KV heads, MLP and vocabulary all divide by 8: tensor parallelism really splits them.
CFG = get_model_config('tiny', vocab_size=264, num_heads=8, num_kv_heads=8, mlp_dim=128)
TASK = synthetic.get_task('transitive')


@pytest.fixture(scope='module')
def setup():
    train_mesh = sharding.make_mesh((1, 8, 1))
    policy = sharding.create_sharded(lambda: Decoder(CFG, rngs=nnx.Rngs(0)), train_mesh)
    reference = sharding.create_sharded(lambda: Decoder(CFG, rngs=nnx.Rngs(1)), train_mesh)
    records = TASK.prompt_records(64, seed=0)
    tokenize = pipeline.make_tokenize_fn('prompt', TOK, max_prompt_len=8)
    stream = pipeline.batch_stream(records, tokenize_fn=tokenize, global_batch_size=8, seed=0)
    return train_mesh, policy, reference, records, stream


def rollout_under(setup, spec):
    train_mesh, policy, reference, records, stream = setup
    generation = resharding.GenerationSharding.from_spec(spec, train_mesh)
    r = rollout_lib.Rollout(
        prompts=stream, records=records, tok=TOK, scorer=rollout_lib.GoldScorer(TASK),
        reference=reference, mesh=train_mesh, seed=3, task=TASK, generation=generation,
        config=rollout_lib.RolloutConfig(samples_per_prompt=2, max_new_tokens=10))
    with jax.set_mesh(train_mesh):
        return r(4, policy), generation


def test_parse_shape():
    assert resharding.parse_shape('train') is None
    assert resharding.parse_shape('tensor') == (1, 1, -1)
    assert resharding.parse_shape('replicated') == (-1, 1, 1)
    assert resharding.parse_shape('2,1,4') == (2, 1, 4)
    with pytest.raises(ValueError, match='D,F,T'):
        resharding.parse_shape('fsdp')


def test_reshard_places_every_parameter_on_the_generation_sharding(setup):
    train_mesh, policy, _, _, _ = setup
    train_specs = jax.tree.leaves(sharding.spec_tree(policy))
    assert any('fsdp' in str(s) for s in train_specs)  # the update's sharding is FSDP
    tp = resharding.GenerationSharding.from_spec('tensor', train_mesh)
    moved, seconds = tp.reshard(policy)
    assert seconds > 0
    specs = sharding.spec_tree(moved)
    assert specs['embedding'].value == jax.sharding.PartitionSpec('tensor', None)
    flat = jax.tree.leaves(specs)
    assert any('tensor' in str(s) for s in flat) and not any('fsdp' in str(s) for s in flat)
    rep = resharding.GenerationSharding.from_spec('replicated', train_mesh)
    moved, _ = rep.reshard(policy)
    assert all(s == jax.sharding.PartitionSpec() or all(a is None
                                                        for a in s)
               for s in jax.tree.leaves(sharding.spec_tree(moved)))
    # Same values, other home: the move is exact.
    for a, b in zip(jax.tree.leaves(nnx.state(policy)), jax.tree.leaves(nnx.state(moved))):
        assert b.sharding.mesh.shape == {'data': 8, 'fsdp': 1, 'tensor': 1}
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('spec', ['tensor', 'replicated'])
def test_generation_sharding_gives_the_training_sharding_rollout(setup, spec):
    (base, base_metrics), none = rollout_under(setup, 'train')
    assert none is None and 'rollout/reshard_s' not in base_metrics
    (other, other_metrics), generation = rollout_under(setup, spec)
    assert generation.shape == {'tensor': (1, 1, 8), 'replicated': (8, 1, 1)}[spec]
    np.testing.assert_array_equal(other.response, base.response)
    np.testing.assert_array_equal(other.response_mask, base.response_mask)
    np.testing.assert_allclose(other.sample_logp, base.sample_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(other.old_logp, base.old_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(other.ref_logp, base.ref_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(other.scores, base.scores)
    assert base.response_mask.sum() > 16  # responses of some length, not all EOS at once
    assert other_metrics['rollout/reshard_s'] > 0
