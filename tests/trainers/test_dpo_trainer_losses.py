"""The DPO trainer's reading of the loss table: what it feeds the rows that read more than the
pair's log-probs ('sft', 'bco_pair', 'discopop'), and which lists of types it refuses.

The references are computed here from the tiny model's own per-token log-probs and the batch's
masks, not by the trainer's code path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignjax.losses import preference
from alignjax.models import Decoder, get_model_config, scoring
from alignjax.trainers import dpo

from dpo_fixtures import loss_config, preference_batch

N = 8


@pytest.fixture(scope='module')
def policy():
    return Decoder(get_model_config('tiny'), rngs=nnx.Rngs(0))


@pytest.fixture(scope='module')
def batch():
    return preference_batch(N, seed=3)


def chosen_token_logps(policy, batch):
    """[B, R] log-probs of the chosen responses' tokens (0 off the mask), and the mask."""
    per_token = scoring.grouped_response_logprobs(policy, batch['prompt'], batch['prompt_mask'],
                                                  batch['chosen'][:, None],
                                                  batch['chosen_mask'][:, None])[:, 0]
    return np.asarray(per_token, np.float64), np.asarray(batch['chosen_mask'], bool)


@pytest.mark.parametrize('types', [('bco_pair',), ('aot',), ('aot_unpaired',), ('discopop',),
                                   ('sft',), ('sigmoid_norm',), ('sigmoid_norm', 'sft')])
def test_new_types_train(policy, batch, types):
    fn = dpo.make_loss_fn(loss_config(types=types))
    graphdef, state = nnx.split(policy)

    def f(s):
        total, count, metrics = fn(nnx.merge(graphdef, s), {}, batch, None)
        return total, (count, metrics)

    (total, (count, metrics)), grads = jax.value_and_grad(f, has_aux=True)(state)
    assert float(count) == N and np.isfinite(float(total))
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and max(norms) > 0
    assert set(metrics) >= {'rewards/chosen', 'rewards/rejected'}


def test_sft_is_the_token_mean_over_the_batch(policy, batch):
    per_token, mask = chosen_token_logps(policy, batch)
    token_mean = -per_token[mask].sum() / mask.sum()  # TRL's 'sft': every chosen token weighs one
    total, count, _ = dpo.make_loss_fn(loss_config(types=('sft',)))(policy, {}, batch, None)
    np.testing.assert_allclose(float(total) / float(count), token_mean, rtol=1e-5)
    per_pair = np.mean(-(per_token * mask).sum(1)
                       / mask.sum(1))  # rpo_alpha's term: pairs weigh one
    assert not np.isclose(per_pair, token_mean, rtol=1e-4)  # lengths differ in this batch


def test_bco_reads_the_shift_column_and_keeps_the_running_mean(policy, batch):
    fn = dpo.make_loss_fn(loss_config(types=('bco_pair',), beta=0.5))
    pc, pr, _, _ = dpo.pair_logps(policy, batch)
    rc, rr = batch['ref_chosen_logps'], batch['ref_rejected_logps']
    for delta in (0.0, 0.8):
        shifted = {**batch, dpo.BCO_DELTA: jnp.full((N,), delta, jnp.float32)}
        total = fn(policy, {}, shifted, None)[0]
        r_c, r_r = (0.5 * np.asarray(x, np.float64) for x in (pc - rc, pr - rr))
        expected = np.sum(np.logaddexp(0.0, -(r_c - delta)) + np.logaddexp(0.0, r_r - delta))
        np.testing.assert_allclose(float(total), expected, rtol=1e-5)

    source = lambda step, model, algo_state: ({'chosen': np.zeros((N, 3))}, {'x': 1.0})
    batches, state, update = dpo.with_bco_shift(source)
    means = []
    for step, (chosen, rejected) in enumerate([(0.3, -0.1), (1.0, 0.2), (-0.4, -0.8)]):
        host_batch, figures = batches(step, None, state)
        expected = np.mean(means) if means else 0.0  # the batches before this one
        np.testing.assert_allclose(host_batch[dpo.BCO_DELTA], np.full(N, expected), rtol=1e-6)
        assert figures['bco/delta'] == pytest.approx(expected, rel=1e-6) and figures['x'] == 1.0
        means.append(0.5 * (chosen + rejected))
        state = update(state, {'rewards/chosen': chosen, 'rewards/rejected': rejected})
    assert int(state['bco_batches']) == 3


def test_discopop_tau_is_read_from_the_config(policy, batch):
    out = {
        tau: float(
            dpo.make_loss_fn(loss_config(types=('discopop',),
                                         discopop_tau=tau))(policy, {}, batch,
                                                            None)[0]) for tau in (0.05, 2.0)
    }
    pc, pr, _, _ = dpo.pair_logps(policy, batch)
    args = (pc, pr, batch['ref_chosen_logps'], batch['ref_rejected_logps'])
    for tau, total in out.items():
        expected = preference.dpo_loss(*args, loss_types=('discopop',), beta=0.1,
                                       discopop_tau=tau)[0]
        np.testing.assert_allclose(total, float(expected), rtol=1e-5)
    assert out[0.05] != pytest.approx(out[2.0], rel=1e-4)


def test_length_normalised_types_mix_only_with_their_kind():
    with pytest.raises(ValueError, match="'sigmoid_norm' reads per-token average"):
        dpo.make_loss_fn(loss_config(types=('sigmoid_norm', 'hinge')))
    dpo.make_loss_fn(loss_config(types=('sigmoid_norm', 'hinge'), length_normalize=True))
    dpo.make_loss_fn(loss_config(types=('sigmoid_norm', 'sft')))  # sft reads token NLLs
    with pytest.raises(ValueError, match="'simpo' stands alone"):
        dpo.make_loss_fn(loss_config(types=('simpo', 'sft')))
