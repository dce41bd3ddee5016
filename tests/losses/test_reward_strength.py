"""Preference strength, label flipping and the adaptive margin (Secrets of RLHF II) against NumPy.

The references are written out in NumPy (population std as a mean of squares, the flip as a
per-pair loop, log sigmoid(x) = -logaddexp(0, -x)), not by calling the code under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.losses import reward

B, K = 16, 4


def close(actual, expected, rtol=1e-6, atol=1e-6):
    actual = np.asarray(actual, np.float64)
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def member_rewards(seed, shape=(B, K)):
    rng = np.random.default_rng(seed)
    rc = rng.normal(0, 2, shape).astype(np.float32)
    rr = rng.normal(0, 2, shape).astype(np.float32)
    rc[:2] += 50.0  # large gaps both ways
    rr[2:4] += 50.0
    return rc, rr


def np_strength(rc, rr):
    d = np.asarray(rc, np.float64) - np.asarray(rr, np.float64)
    mean = d.sum(axis=1) / d.shape[1]
    std = np.sqrt(((d - mean[:, None])**2).sum(axis=1) / d.shape[1])
    return mean, std


def np_flip(rc, rr, d, below):
    rc, rr, d = (np.array(x, np.float64) for x in (rc, rr, d))
    flipped = np.zeros(len(d), bool)
    for i in range(len(d)):
        if d[i] < below:
            rc[i], rr[i] = rr[i].copy(), rc[i].copy()
            d[i] = -d[i]
            flipped[i] = True
    return rc, rr, d, flipped


def test_preference_strength_matches_numpy():
    rc, rr = member_rewards(0)
    mean, std = reward.preference_strength(rc, rr)
    expected_mean, expected_std = np_strength(rc, rr)
    assert mean.shape == std.shape == (B,)
    close(mean, expected_mean, rtol=1e-6, atol=1e-5)  # float32 sums of gaps near 50
    close(std, expected_std, rtol=1e-6, atol=1e-5)


def test_preference_strength_of_one_member_is_its_gap_with_no_spread():
    rc, rr = member_rewards(1)
    for a, b in ((rc[:, :1], rr[:, :1]), (rc[:, 0], rr[:, 0])):
        mean, std = reward.preference_strength(a, b)
        close(mean, rc[:, 0].astype(np.float64) - rr[:, 0])
        close(std, np.zeros(B))


def test_preference_strength_is_antisymmetric_and_shift_invariant():
    rc, rr = member_rewards(2)
    mean, std = reward.preference_strength(rc, rr)
    swapped_mean, swapped_std = reward.preference_strength(rr, rc)
    close(swapped_mean, -np.asarray(mean))
    close(swapped_std, std)
    shift = np.random.default_rng(2).normal(0, 10, (1, K)).astype(np.float32)  # per-member offsets
    shifted_mean, shifted_std = reward.preference_strength(rc + shift, rr + shift)
    close(shifted_mean, mean, atol=1e-5)
    close(shifted_std, std, atol=1e-5)


@pytest.mark.parametrize('below', [0.0, -0.5])
@pytest.mark.parametrize('members', [0, K])  # 0: [B] rewards of one model
def test_flip_by_strength_matches_numpy(below, members):
    shape = (B, members) if members else (B,)
    rc, rr = member_rewards(3, shape)
    d = np.random.default_rng(3).normal(0, 1, B).astype(np.float32)
    d[0], d[1] = below, below - 1e-3  # at and just below the threshold
    out = reward.flip_by_strength(rc, rr, d, below=below)
    expected = np_flip(rc, rr, d, below)
    for got, want in zip(out, expected):
        assert got.shape == want.shape
        close(got, want)
    assert not bool(out[3][0]) and bool(out[3][1])  # strictly below flips
    assert 0 < int(np.sum(expected[3])) < B


def test_flipped_strength_is_nonnegative_and_flipping_back_restores_the_pairs():
    rc, rr = member_rewards(4)
    d = np.random.default_rng(4).normal(0, 1, B).astype(np.float32)
    fc, fr, fd, flipped = reward.flip_by_strength(rc, rr, d)
    assert np.all(np.asarray(fd) >= 0) and 0 < int(np.sum(flipped)) < B
    # The flipped pairs, labelled back the other way, have strength -fd < 0 and flip again: the
    # labels return to the input's, the strength (of the corrected orientation) stays |d|.
    back_c, back_r, back_d, again = reward.flip_by_strength(fc, fr, jnp.where(flipped, -fd, fd))
    np.testing.assert_array_equal(again, flipped)
    for got, want in ((back_c, rc), (back_r, rr), (back_d, np.abs(d))):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('gamma', [0.0, 0.7])
@pytest.mark.parametrize('below', [0.0, -0.3])
def test_flipped_bradley_terry_with_adaptive_margin_matches_numpy(gamma, below):
    # loss = -log sigmoid(r_c - r_r - gamma * d) on the corrected orientation, per member.
    rc, rr = member_rewards(5)
    d = np.random.default_rng(5).normal(0, 2, B).astype(np.float32)
    fc, fr, fd, _ = reward.flip_by_strength(rc, rr, d, below=below)
    total, count = reward.bradley_terry_loss(fc, fr, margin=gamma * fd)
    expected = 0.0
    for i in range(B):
        c, r, s = rc[i].astype(np.float64), rr[i].astype(np.float64), float(d[i])
        if s < below:
            c, r, s = r, c, -s
        expected += np.sum(np.logaddexp(0.0, -(c - r - gamma * s)))
    close(total, expected, rtol=1e-6, atol=1e-5)
    assert float(count) == B * K


def test_adaptive_margin_gradient_is_the_logistic_of_the_shifted_gap():
    # d loss / d r_c = -sigmoid(-(r_c - r_r - gamma * d)) for an unflipped pair, and the
    # rejected response's reward gets it for a flipped one (it is the chosen one then).
    rc = np.array([1.0, 0.5], np.float32)
    rr = np.array([0.0, 2.0], np.float32)
    d = np.array([0.8, -1.5], np.float32)
    gamma = 0.5

    def loss(rc, rr):
        fc, fr, fd, _ = reward.flip_by_strength(rc, rr, d)
        return reward.bradley_terry_loss(fc, fr, margin=gamma * fd)[0]

    g_c, g_r = jax.grad(loss, argnums=(0, 1))(rc, rr)
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))
    pair0 = -sig(-(1.0 - 0.0 - gamma * 0.8))
    pair1 = -sig(-(2.0 - 0.5 - gamma * 1.5))  # flipped: the rejected 2.0 is the chosen one
    close(g_c, [pair0, -pair1])
    close(g_r, [-pair0, pair1])


def test_flip_by_strength_refuses_bad_input():
    x = jnp.zeros(3)
    with pytest.raises(ValueError, match='below must be <= 0'):
        reward.flip_by_strength(x, x, x, below=0.1)
    with pytest.raises(ValueError, match='strength'):
        reward.flip_by_strength(x, x, jnp.zeros(4))
    with pytest.raises(ValueError, match='r_chosen'):
        reward.preference_strength(jnp.zeros(3), jnp.zeros(4))
