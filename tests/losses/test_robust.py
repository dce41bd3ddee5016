"""Robust rewards (`losses/robust.py`, BRME in `losses/reward.py`) against direct NumPy
computations of their equations."""

import numpy as np
import pytest

from alignjax import validation
from alignjax.losses import reward, robust


def test_brme_is_lam_mean_plus_rest_min():
    r = np.random.default_rng(0).normal(size=(6, 4))
    for lam in (0.0, 0.3, 1.0):
        np.testing.assert_allclose(reward.aggregate_ensemble(r, method='brme', lam=lam),
                                   lam * r.mean(1) + (1 - lam) * r.min(1), rtol=1e-6, atol=1e-6)


def test_log_sigmoid_transform_sums_over_members_and_is_stable():
    rng = np.random.default_rng(1)
    r, ref = rng.normal(size=(2, 5, 3)) * 3
    expected = np.sum(np.log(1.0 / (1.0 + np.exp(-(r - ref)))), axis=1)
    np.testing.assert_allclose(robust.log_sigmoid_transform(r, ref), expected, rtol=1e-6)
    np.testing.assert_allclose(robust.log_sigmoid_transform(r[:, 0], ref[:, 0]),
                               expected * 0 + np.log(1 / (1 + np.exp(-(r[:, 0] - ref[:, 0])))),
                               rtol=1e-6)
    big = robust.log_sigmoid_transform(np.array([800.0, -800.0]), np.zeros(2))
    np.testing.assert_allclose(big, [0.0, -800.0])  # saturates above, linear below, finite
    with pytest.raises(ValueError, match='differ'):
        robust.log_sigmoid_transform(r, ref[:, :2])


def test_reference_quantiles_and_lagrange_update():
    scores = np.random.default_rng(2).normal(size=(3, 8, 2))
    np.testing.assert_allclose(robust.reference_quantiles(scores, 0.85),
                               np.quantile(scores, 0.85, axis=1))
    with pytest.raises(ValueError, match='quantile'):
        robust.reference_quantiles(scores, 1.5)
    lam = robust.lagrange_update([0.0, 0.5, 0.2], [1.0, 0.1, 9.0], [0.5, 0.3, np.inf], lr=0.2)
    np.testing.assert_allclose(lam, [0.1, 0.46, 0.2], rtol=1e-6)  # inf: unconstrained
    np.testing.assert_allclose(robust.lagrange_update([0.05], [0.0], [1.0], lr=1.0), [0.0])


def test_constraints_parse_against_the_source_terms():
    names = ['gold', 'reward_model', 'fn:m:f']
    theta = robust.parse_constraints('reward_model<0.5, fn:m:f<-1', names)
    np.testing.assert_array_equal(theta, [np.inf, 0.5, -1.0])
    with pytest.raises(validation.ValidationError, match='TERM<THETA'):
        robust.parse_constraints('rm<0.5', names)
