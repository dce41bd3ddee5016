"""Invariances of the offline trainers' losses: padding, microbatching, cached reference."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignjax import experiment_lib
from alignjax import metrics as metrics_lib
from alignjax import trainers
from alignjax.models import Decoder, PreferenceModel, RewardModel, get_model_config, scoring
from alignjax.trainers import dpo
from alignjax.trainers import loop

from dpo_fixtures import loss_config, preference_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = get_model_config('tiny')

LOSSES = [
    dict(types=('sigmoid',)),
    dict(types=('ipo',)),
    dict(types=('hinge',)),
    dict(types=('simpo',)),
    dict(types=('sigmoid',), rpo_alpha=0.5),
    dict(types=('sigmoid', 'ipo'), weights=(1.0, 0.3)),
    dict(types=('sigmoid',), length_normalize=True),
    dict(types=('robust',), label_smoothing=0.1)
]


@pytest.fixture(scope='module')
def policy():
    return Decoder(CFG, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('kw', LOSSES, ids=lambda kw: '+'.join(kw['types']) + str(len(kw)))
def test_padding_does_not_change_dpo_losses(policy, kw):
    fn = dpo.make_loss_fn(loss_config(**kw))
    a = fn(policy, {}, preference_batch(), None)
    b = fn(policy, {}, preference_batch(prompt_len=13, response_len=20), None)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    for k in a[2]:
        np.testing.assert_allclose(a[2][k][0], b[2][k][0], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize('kw', LOSSES[:4], ids=lambda kw: kw['types'][0])
def test_microbatch_sums_equal_the_full_batch(policy, kw):
    fn = dpo.make_loss_fn(loss_config(**kw))
    graphdef, state = nnx.split(policy)

    def grads(batch):
        f = lambda s: fn(nnx.merge(graphdef, s), {}, batch, None)[0]
        return jax.value_and_grad(f)(state)

    batch = preference_batch()
    full_loss, full_grads = grads(batch)
    halves = [jax.tree.map(lambda x, s=s: x[s], batch) for s in (slice(0, 4), slice(4, 8))]
    parts = [grads(h) for h in halves]
    np.testing.assert_allclose(parts[0][0] + parts[1][0], full_loss, rtol=1e-5)
    # float32 sums in a different order: tolerance relative to each gradient's scale.
    jax.tree.map(
        lambda g, a, b: np.testing.assert_allclose(a + b, g, rtol=1e-4, atol=1e-4 * float(
            jnp.max(jnp.abs(g)))), full_grads, parts[0][1], parts[1][1])


def test_reward_and_preference_scores_ignore_padding():
    rm = RewardModel(CFG, rngs=nnx.Rngs(1), num_heads=3)
    pm = PreferenceModel(CFG, rngs=nnx.Rngs(2))
    a, b = preference_batch(), preference_batch(prompt_len=13, response_len=20)
    for x, y in zip(scoring.chosen_rejected_rewards(rm, a), scoring.chosen_rejected_rewards(rm, b),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    for x, y in zip(scoring.pair_logits(pm, a), scoring.pair_logits(pm, b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_precomputed_reference_equals_per_step_reference(tmp_path):
    """The reference inside the update and the precomputed cache give the same training run."""
    def run(name, precompute):
        c = experiment_lib.load_config(
            os.path.join(ROOT, 'experiments', 'dpo.py') + ':tiny,steps=3')
        c.init_from = ''  # a random start is enough for an equality
        c.mesh.shape = (1, 1, 1)
        c.data.num_examples = 96
        c.log_every = 1
        c.loss.precompute_ref = precompute
        workdir = str(tmp_path / name)
        build = trainers.get_builder('dpo')
        captured = {}

        def capture(config, mesh):
            algo = build(config, mesh)
            captured['frozen'] = sorted(algo.frozen)
            captured['batches'] = [algo.batches(s, None, {})[0] for s in range(3)]
            algo.evaluators = []
            return algo

        loop.train(c, workdir, capture)
        return captured, metrics_lib.read_metrics(workdir)

    (cached, cached_rows), (fresh, fresh_rows) = run('cached', True), run('fresh', False)
    assert cached['frozen'] == [] and fresh['frozen'] == ['reference']
    assert 'ref_chosen_logps' in cached['batches'][0]
    assert 'ref_chosen_logps' not in fresh['batches'][0]
    assert len(cached_rows) == len(fresh_rows) == 3
    for a, b in zip(cached_rows, fresh_rows, strict=True):
        for k in ('loss', 'grad_norm', 'rewards/margin', 'param_norm'):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_dpo_config_errors_name_the_key():
    with pytest.raises(ValueError, match='config.loss.types'):
        dpo.make_loss_fn(loss_config(types=('sigmod',)))
    # loss.beta > 0 is the table of bounds' (experiment_lib.BOUNDS; tests/test_validation.py).
    with pytest.raises(ValueError, match='simpo'):
        dpo.make_loss_fn(loss_config(types=('simpo', 'sigmoid')))
