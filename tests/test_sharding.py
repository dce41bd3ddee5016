"""Tests for alignjax.sharding on 8 simulated CPU devices (tests/conftest.py sets the flag).

On each mesh the tiny model is created sharded from birth with `create_sharded`; every
parameter's PartitionSpec is checked against a table written by hand from the rules (not by
calling `logical_to_spec`), and the forward logits, a loss, its gradients and sampling are
compared with the single-device results.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from alignjax import sampling, sharding
from alignjax.models import PRESETS, Decoder, RewardModel, ValueModel, response_logprobs

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 (simulated) devices')

# The tiny preset (vocab 264, embed 64, 4 heads, 2 KV heads, head_dim 16, mlp 128) with one
# layer: every kind of parameter, and about a quarter less compile time on each of 5 meshes.
CFG = PRESETS['tiny'].replace(num_layers=1)
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2)]
SAMPLER = sampling.SamplingConfig(max_new_tokens=8, temperature=0.8, top_k=50)
B, PROMPT, RESPONSE = 8, 8, 8

# Expected specs by parameter name, from DEFAULT_RULES: vocab, mlp, heads, kv_heads -> 'tensor';
# embed -> 'fsdp'; head_dim, norm -> replicated; a mesh axis of size 1 is dropped, and a dimension
# that does not divide by its mesh axis is replicated.
_TENSOR_AND_FSDP = {  # 'tensor' and 'fsdp' both > 1 and every dimension divides
    'embedding': ('tensor', 'fsdp'),  # (vocab 264, embed 64)
    'q_proj': ('fsdp', 'tensor', None),  # (embed, heads 4, head_dim)
    'k_proj': ('fsdp', 'tensor', None),  # (embed, kv_heads 2, head_dim)
    'v_proj': ('fsdp', 'tensor', None),
    'o_proj': ('tensor', None, 'fsdp'),  # (heads, head_dim, embed)
    'gate_proj': ('fsdp', 'tensor'),  # (embed, mlp 128)
    'up_proj': ('fsdp', 'tensor'),
    'down_proj': ('tensor', 'fsdp'),  # (mlp, embed)
    'scale': (None,),
}
EXPECTED_SPECS = {
    (8, 1, 1): {name: (None,) * len(spec) for name, spec in _TENSOR_AND_FSDP.items()},
    (2, 4, 1): {  # tensor has size 1: only the embed dimension is split, over fsdp
        'embedding': (None, 'fsdp'), 'q_proj': ('fsdp', None, None), 'k_proj': ('fsdp', None, None),
        'v_proj': ('fsdp', None, None), 'o_proj': (None, None, 'fsdp'), 'gate_proj': ('fsdp', None),
        'up_proj': ('fsdp', None), 'down_proj': (None, 'fsdp'), 'scale': (None,)
    },
    (2, 2, 2): _TENSOR_AND_FSDP,
    (1, 4, 2): _TENSOR_AND_FSDP,  # 64 / 4, 264 / 2, 128 / 2, 4 / 2 and 2 / 2 all divide
}


def _mesh_name(shape):
    return 'x'.join(map(str, shape))


def _leaves(state):
    """[(path string, leaf)] of an nnx.State (of arrays, specs or shardings)."""
    unwrap = lambda x: x.value if isinstance(x, nnx.Variable) else x
    return [('/'.join(map(str, path)), unwrap(x)) for path, x in state.flat_state()]


def _spec(expected, path):
    """The expected spec of the parameter at `path`: by its name, with the leading layer axis
    of stacked blocks (logical 'layers') replicated."""
    spec = tuple(expected[path.rsplit('/', 1)[-1]])
    return (None, *spec) if path.startswith('layers/') or '/layers/' in path else spec


def _shard_shape(shape, spec, mesh):
    return tuple(d // (mesh.shape[a] if a else 1) for d, a in zip(shape, spec))


def make_batch():
    rng = np.random.RandomState(0)
    prompt = rng.randint(3, CFG.vocab_size, (B, PROMPT)).astype(np.int32)
    prompt_mask = (np.arange(PROMPT)[None] >= rng.randint(0, 6, (B, 1))).astype(np.int32)
    response = rng.randint(3, CFG.vocab_size, (B, RESPONSE)).astype(np.int32)
    response_mask = (np.arange(RESPONSE)[None] < rng.randint(1, RESPONSE + 1,
                                                             (B, 1))).astype(np.int32)
    return {
        'prompt': prompt * prompt_mask, 'prompt_mask': prompt_mask,
        'response': response * response_mask, 'response_mask': response_mask
    }


def ctor():
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    # Peaked next-token distributions, so that sampling is not decided by float noise.
    model.embedding.value = model.embedding[...] * 15.0
    return model


def step(graphdef, state, batch):
    """Logits, mean response NLL and its gradients: forward, loss and backward in one program."""
    def loss_fn(state):
        model = nnx.merge(graphdef, state)
        logp = response_logprobs(model, batch['prompt'], batch['prompt_mask'], batch['response'],
                                 batch['response_mask'])
        return -jnp.sum(logp) / jnp.sum(batch['response_mask'])

    model = nnx.merge(graphdef, state)
    tokens = jnp.concatenate([batch['prompt'], batch['response']], axis=1)
    mask = jnp.concatenate([batch['prompt_mask'], batch['response_mask']], axis=1)
    loss, grads = jax.value_and_grad(loss_fn)(state)
    return model(tokens, mask), loss, grads


def run_all(model, batch, key):
    """(logits, loss, grads, sample) as NumPy, for a model and batch placed anywhere."""
    graphdef, state = nnx.split(model)
    logits, loss, grads = jax.jit(functools.partial(step, graphdef))(state, batch)
    out = sampling.generate(model, batch['prompt'], batch['prompt_mask'], key, SAMPLER)
    to_np = lambda tree: jax.tree.map(np.asarray, tree)
    return to_np(logits), float(loss), to_np(grads), to_np(out)


@pytest.fixture(scope='module')
def single_device():
    """Reference results on one device and no mesh, from the same constructor run eagerly."""
    model = ctor()
    return model, run_all(model, make_batch(), jax.random.key(0))


@pytest.fixture(scope='module', params=MESHES, ids=_mesh_name)
def sharded(request):
    mesh = sharding.make_mesh(request.param)
    with jax.set_mesh(mesh):
        model = sharding.create_sharded(ctor, mesh)
        batch = sharding.shard_batch(make_batch(), mesh)
        results = run_all(model, batch, jax.random.key(0))
    return request.param, mesh, model, batch, results


def test_parameters_are_sharded_from_birth_by_the_rules(sharded):
    shape, mesh, model, _, _ = sharded
    expected = EXPECTED_SPECS[shape]
    leaves = _leaves(nnx.state(model))
    assert len(leaves) == 2 + 9  # embedding, final norm, and 9 stacked block parameters
    for path, value in leaves:
        spec = _spec(expected, path)
        assert value.sharding == NamedSharding(mesh, P(*spec)), path
        # No device holds more than its shard, and all 8 devices hold one.
        want = _shard_shape(value.shape, spec, mesh)
        assert {s.data.shape for s in value.addressable_shards} == {want}, path
        assert len(value.addressable_shards) == 8
    specs = dict(_leaves(sharding.spec_tree(model)))
    assert specs['layers/attn/q_proj'] == P(None, *expected['q_proj'])


def test_kv_heads_that_do_not_divide_are_replicated():
    """On a tensor axis of 4 the 2 KV heads cannot be split: k/v projections replicate them while
    the 4 query heads, vocab and mlp still split (checked on the abstract state: no compile)."""
    cfg = CFG.replace(attention_bias=True, tie_embeddings=False)
    mesh = sharding.make_mesh((1, 2, 4))
    abstract = nnx.state(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    got = {path: s.spec for path, s in _leaves(sharding.state_shardings(abstract, mesh))}
    want = {
        'embedding': ('tensor', 'fsdp'), 'lm_head': ('fsdp', 'tensor'),
        'q_proj': ('fsdp', 'tensor', None), 'k_proj': ('fsdp', None, None), 'v_proj':
            ('fsdp', None, None), 'o_proj': ('tensor', None, 'fsdp'), 'q_bias': ('tensor', None),
        'k_bias': (None, None), 'v_bias': (None, None), 'gate_proj': ('fsdp', 'tensor'), 'up_proj':
            ('fsdp', 'tensor'), 'down_proj': ('tensor', 'fsdp'), 'scale': (None,)
    }
    assert set(got) == {p for p, _ in _leaves(abstract)}
    for path, spec in got.items():
        assert spec == P(*_spec(want, path)), path


def test_head_parameters_and_overridden_rules():
    mesh = sharding.make_mesh((2, 2, 2))
    for cls in (ValueModel, RewardModel):
        abstract = nnx.state(nnx.eval_shape(lambda: cls(CFG, rngs=nnx.Rngs(0))))
        got = {p: s.spec for p, s in _leaves(sharding.state_shardings(abstract, mesh))}
        head = 'value_head' if cls is ValueModel else 'reward_head'
        assert got[head] == P('fsdp', None)
        assert got['backbone/layers/attn/q_proj'] == P(None, 'fsdp', 'tensor', None)
    # A rules table from a config (lists, as a ConfigDict holds them): embed over both fsdp and
    # tensor, mlp replicated. A mesh axis is used once per tensor: vocab takes 'tensor' first.
    rules = sharding.rules_from_config([['vocab', 'tensor'], ['embed', ['fsdp', 'tensor']],
                                        ['mlp', None], ['heads', 'tensor'], ['kv_heads', 'tensor'],
                                        ['head_dim', None], ['norm', None]])
    abstract = nnx.state(nnx.eval_shape(lambda: Decoder(CFG, rngs=nnx.Rngs(0))))
    got = {p: s.spec for p, s in _leaves(sharding.state_shardings(abstract, mesh, rules))}
    assert got['embedding'] == P('tensor', 'fsdp')
    assert got['layers/mlp/gate_proj'] == P(None, ('fsdp', 'tensor'), None)
    assert got['layers/attn/q_proj'] == P(None, ('fsdp', 'tensor'), None, None)
    assert got['layers/attn/o_proj'] == P(None, 'tensor', None, 'fsdp')


def test_sharded_weights_equal_single_device_weights(sharded, single_device):
    _, _, model, _, _ = sharded
    ref = dict(_leaves(nnx.state(single_device[0])))
    for path, value in _leaves(nnx.state(model)):
        # Equal up to float rounding: eager and jitted initialisers may fuse std * normal
        # differently (measured: at most one float32 ulp).
        np.testing.assert_allclose(np.asarray(value), np.asarray(ref[path]), rtol=1e-6, atol=1e-7,
                                   err_msg=path)


def test_batch_is_sharded_over_data_and_fsdp(sharded):
    _, mesh, _, batch, _ = sharded
    rows = B // (mesh.shape['data'] * mesh.shape['fsdp'])
    for value in batch.values():
        assert value.sharding.spec == P(('data', 'fsdp'), None)
        assert {s.data.shape for s in value.addressable_shards} == {(rows, value.shape[1])}


def test_forward_loss_and_gradients_equal_single_device(sharded, single_device):
    logits, loss, grads, _ = sharded[-1]
    ref_logits, ref_loss, ref_grads, _ = single_device[1]
    # Sharded matmuls sum partial products in another order; float32 rounding stays ~1e-6.
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    assert loss > 0
    ref = dict(_leaves(ref_grads))
    got = _leaves(grads)
    assert len(got) == len(ref)
    for path, g in got:
        scale = np.abs(ref[path]).max()
        assert scale > 0, path
        np.testing.assert_allclose(g, ref[path], rtol=1e-5, atol=1e-5 * scale, err_msg=path)


def test_sampling_equals_single_device(sharded, single_device):
    out = sharded[-1][-1]
    ref = single_device[1][-1]
    np.testing.assert_array_equal(out['tokens'], ref['tokens'])
    np.testing.assert_array_equal(out['mask'], ref['mask'])
    for key in ('logprobs', 'policy_logprobs'):
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-5, atol=1e-5)
    assert len(np.unique(ref['tokens'])) > 8  # not a degenerate sample


def _hidden_sharding(mesh, rules=None):
    """The sharding XLA gives a Decoder's hidden states (and a block's MLP activations) when it
    is free to choose: only the activations' constraints fix them."""
    cfg = PRESETS['tiny'].replace(num_layers=1)
    with jax.set_mesh(mesh), sharding.use_rules(rules):
        model = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(0)), mesh)
        graphdef, state = nnx.split(model)
        tokens = jnp.ones((8, 16), jnp.int32)
        f = jax.jit(lambda s, t: nnx.merge(graphdef, s).hidden(t, positions=jnp.zeros_like(t),
                                                               kv_mask=jnp.ones_like(t))[0])
        spec = tuple(f.lower(state, tokens).compile().output_shardings.spec)
        return P(*spec, *([None] * (3 - len(spec))))


def test_activations_follow_the_rules_table():
    """The batch of every activation stays sharded over (data, fsdp) by default, whatever the
    input's placement, and `config.mesh.rules` moves it (a dead rule would change nothing)."""
    mesh = sharding.make_mesh((2, 4, 1))
    assert _hidden_sharding(mesh) == P(('data', 'fsdp'), None, None)
    rules = [list(r) for r in sharding.DEFAULT_RULES if r[0] not in ('batch', 'length')]
    rules += [['batch', 'data'], ['length', 'fsdp']]
    assert _hidden_sharding(mesh, rules) == P('data', 'fsdp', None)
    # And batch_sharding (what shard_batch places host batches on) reads the same table.
    with sharding.use_rules(rules):
        assert sharding.batch_sharding(mesh, 2).spec == P('data', None)
    assert sharding.batch_sharding(mesh, 2).spec == P(('data', 'fsdp'), None)
