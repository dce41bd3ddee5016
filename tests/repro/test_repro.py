"""The reproductions' own arithmetic: the best-of-n estimator, its KL and the idealised ranking
accuracy, each against a direct computation."""

import itertools

import numpy as np
import pytest

from alignjax.repro import best_of_n
from alignjax.repro import ranking_accuracy


def test_best_of_n_estimator_equals_the_mean_over_every_subset():
    rng = np.random.default_rng(0)
    select, values = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    for n in (1, 2, 3, 5, 7):
        brute = np.mean([
            np.mean([
                values[p, list(c)][np.argmax(select[p, list(c)])]
                for c in itertools.combinations(range(7), n)
            ])
            for p in range(3)
        ])
        np.testing.assert_allclose(
            best_of_n.expected_best_of_n(select, values, [n])[0], brute, rtol=1e-12, atol=1e-12)
    for n in range(1, 8):
        np.testing.assert_allclose(best_of_n.subset_max_weights(7, n).sum(), 1.0, rtol=1e-12)


def test_best_of_n_kl_closed_form():
    np.testing.assert_allclose(best_of_n.kl_best_of_n([1, 2, 4]),
                               [0.0, np.log(2) - 0.5, np.log(4) - 0.75])


@pytest.mark.parametrize('method', ['mean', 'min', 'mean_minus_std'])
def test_aggregate_matches_the_loss_library(method):
    from alignjax.losses import reward
    members = np.random.default_rng(1).normal(size=(5, 4))
    np.testing.assert_allclose(best_of_n.aggregate(members, method),
                               np.asarray(reward.aggregate_ensemble(members, method=method)),
                               rtol=1e-5, atol=1e-6)


def test_idealized_ranking_accuracy_limits():
    rng = np.random.default_rng(2)
    ref_diff = rng.normal(scale=3.0, size=200)
    gold_p = 1 / (1 + np.exp(-rng.normal(scale=2.0, size=200)))
    # beta -> infinity: the optimum is the reference; beta -> 0: it ranks by the gold preference.
    assert ranking_accuracy.idealized_accuracy(ref_diff, gold_p, 1e9) == \
        ranking_accuracy.ranking(ref_diff)
    assert ranking_accuracy.idealized_accuracy(ref_diff, gold_p, 1e-9) == \
        ranking_accuracy.ranking(gold_p - 0.5)
    # In between, by hand: log mu ratio + logit(p) / beta.
    beta = 0.5
    by_hand = np.mean(ref_diff + np.log(gold_p / (1 - gold_p)) / beta > 0)
    assert ranking_accuracy.idealized_accuracy(ref_diff, gold_p, beta) == pytest.approx(by_hand)


def test_collapse_peak_finds_the_peak_before_the_first_fall():
    from alignjax.repro import monitors
    assert monitors.collapse_peak([0.1, 0.3, 0.5, 0.45, 0.2, 0.6]) == 2  # falls 0.3 below 0.5
    assert monitors.collapse_peak([0.1, 0.3, 0.25, 0.35]) is None  # never more than 0.1 below
    assert monitors.collapse_peak([0.5, 0.39]) == 0
