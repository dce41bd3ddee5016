"""The reward and preference models' losses (Bradley-Terry, ensembles, accuracy, calibration,
the antisymmetric pairwise loss) against NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.losses import preference, reward

from loss_refs import B, K, close, np_log_sigmoid

# --- reward model ---------------------------------------------------------------------------------


def np_bradley_terry(rc, rr, margin, centering):
    rc, rr = np.asarray(rc, np.float64), np.asarray(rr, np.float64)
    d = rc - rr - (0.0 if margin is None else np.asarray(
        margin, np.float64).reshape((-1,) + (1,) * (rc.ndim - 1)))
    return np.logaddexp(0.0, -d) + centering * (rc + rr)**2


@pytest.mark.parametrize('use_margin', [False, True])
@pytest.mark.parametrize('centering', [0.0, 0.01])
def test_bradley_terry_matches_numpy(use_margin, centering):
    rng = np.random.default_rng(0)
    rc = rng.normal(0, 3, B).astype(np.float32)
    rr = rng.normal(0, 3, B).astype(np.float32)
    rc[:3] += 100.0  # |r_c - r_r| ~ 100 in both directions
    rr[3:6] += 100.0
    margin = rng.uniform(0, 2, B).astype(np.float32) if use_margin else None
    total, count = reward.bradley_terry_loss(rc, rr, margin=margin, centering=centering)
    close(total, np.sum(np_bradley_terry(rc, rr, margin, centering)), rtol=1e-6)
    assert float(count) == B


def test_bradley_terry_ensemble_sums_over_members():
    rng = np.random.default_rng(1)
    rc = rng.normal(0, 2, (B, K)).astype(np.float32)
    rr = rng.normal(0, 2, (B, K)).astype(np.float32)
    margin = rng.uniform(0, 1, B).astype(np.float32)
    total, count = reward.bradley_terry_loss(rc, rr, margin=margin, centering=0.1)
    assert float(count) == B * K
    close(total, np.sum(np_bradley_terry(rc, rr, margin, 0.1)))
    per_member = sum(
        float(reward.bradley_terry_loss(rc[:, j], rr[:, j], margin=margin, centering=0.1)[0])
        for j in range(K))
    close(total, per_member)


def test_bradley_terry_margin_shifts_the_decision_boundary():
    # With r_c - r_r equal to the margin the logistic term is exactly log 2.
    total, count = reward.bradley_terry_loss(jnp.array([3.0, 0.5]), jnp.array([1.0, 0.0]),
                                             margin=jnp.array([2.0, 0.5]))
    close(total / count, np.log(2.0))


def test_bradley_terry_mask_drops_padding():
    rng = np.random.default_rng(2)
    rc, rr = rng.normal(size=(2, B, K)).astype(np.float32)
    real = np.arange(B) < 10
    rc[~real], rr[~real] = 1e4, -1e4  # padding rows hold garbage
    total, count = reward.bradley_terry_loss(rc, rr, centering=0.05, mask=real)
    close(total, np.sum(np_bradley_terry(rc[real], rr[real], None, 0.05)))
    assert float(count) == 10 * K


@pytest.mark.parametrize('method', ['mean', 'min', 'mean_minus_std'])
def test_aggregate_ensemble_matches_numpy(method):
    rewards = np.random.default_rng(3).normal(size=(B, K)).astype(np.float32)
    r64 = rewards.astype(np.float64)
    expected = {
        'mean': r64.mean(axis=1),
        'min': r64.min(axis=1),
        # population variance written out, not np.std
        'mean_minus_std': r64.mean(axis=1) -
                          0.7 * np.sqrt(np.mean(
                              (r64 - r64.mean(axis=1, keepdims=True))**2, axis=1)),
    }[method]
    out = reward.aggregate_ensemble(rewards, method=method, lam=0.7)
    assert out.shape == (B,)
    close(out, expected)
    column = rewards[:, :1]
    close(reward.aggregate_ensemble(column, method=method, lam=0.7), column[:, 0])


def test_aggregate_ensemble_unknown_method_names_it():
    with pytest.raises(ValueError, match='median'):
        reward.aggregate_ensemble(jnp.ones((2, 3)), method='median')


def test_pairwise_accuracy_counts_ties_as_half():
    correct, count = reward.pairwise_accuracy(jnp.array([2.0, 1.0, 0.0, 5.0]),
                                              jnp.array([1.0, 1.0, 3.0, -5.0]))
    assert float(correct) == 2.5 and float(count) == 4


def test_expected_calibration_error_hand_cases():
    # Perfectly calibrated: in the 0.25 bin one label in four is 1, in the 0.75 bin three in four.
    probs = [0.25] * 4 + [0.75] * 4
    labels = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert reward.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # Over-confident: always 0.9 while half the labels are 1.
    assert reward.expected_calibration_error([0.9] * 10, [1, 0] * 5) == pytest.approx(0.4)
    # Two bins weighted by size: 3/4 * |1 - 0.15| + 1/4 * |0 - 0.65|.
    ece = reward.expected_calibration_error([0.1, 0.2, 0.15, 0.65], [1, 1, 1, 0], num_bins=2)
    assert ece == pytest.approx(0.75 * 0.85 + 0.25 * 0.65)
    # 1.0 belongs to the last bin; 0.0 to the first.
    assert reward.expected_calibration_error([1.0, 0.0], [1, 0]) == pytest.approx(0.0)


# --- pairwise preference model --------------------------------------------------------------------


def test_preference_model_loss_matches_numpy_and_counts_both_orders():
    rng = np.random.default_rng(4)
    cr = rng.normal(0, 40, 9).astype(np.float32)
    rc = rng.normal(0, 40, 9).astype(np.float32)
    total, count = preference.preference_model_loss(cr, rc)
    expected = np.sum(
        np.logaddexp(0.0, -cr.astype(np.float64)) + np.logaddexp(0.0, rc.astype(np.float64)))
    close(total, expected, rtol=1e-6)
    assert float(count) == 18


def test_preference_model_loss_antisymmetric_logits():
    logit = jnp.array([-3.0, 0.0, 0.7, 50.0])
    total, count = preference.preference_model_loss(logit, -logit)
    close(total, np.sum(2.0 * -np_log_sigmoid(np.asarray(logit))))
    assert float(count) == 8
