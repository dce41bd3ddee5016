"""Tests for alignjax.games: the exact regularised Nash equilibrium and the tabular Nash updates.

The acceptance game (issue 6) has five actions: a cycle 0 > 1 (0.85), 1 > 2 (0.75), 2 > 0 (0.8);
each of 0, 1, 2 beats 3 with 0.65 and 4 with 0.7; 3 beats 4 with 0.6; mu = (.3, .1, .2, .15, .25)
and tau = 0.01. Its unregularised Nash equilibrium is (0.25, 0.3, 0.35, 0, 0) / 0.9 (the cycle's
advantages 0.35, 0.25, 0.3 in rotation); pi* at tau = 0.01 is close to it.

Measured on this game (steps until KL(pi* || pi_t) < 1e-4 for good, pi_0 = mu):

    eta        0.1   0.2   0.3   0.4   0.5   0.6   1    2    3    5
    nash_md   4158  2552  2095  2122  2520  4033   -    -    -    -
    omd       4198  2506  2076  2061  2450  4040   -    -    -    -
    nash_mp   3180     -   856     -   432     -  157   54   31   20

('-' under nash_md / omd: eta >= 0.7 no longer converges; eta * tau <= 1 is not the binding limit,
the rotation of the cycle is.) Linearised at pi*, the cycle is a rotation of speed lambda = 0.17
(the imaginary eigenvalue of (P - 1/2)(diag(pi*) - pi* pi*^T)); Nash-MD and OMD contract it by at
best |1 - eta tau + i eta lambda| ~ 1 - tau^2 / (2 lambda^2) = 0.9983 per step (eta ~ 0.3), while
mirror prox's half step cancels the rotation, so it can take eta = 5 (0.83 per step). So Nash-MP
needs fewer iterations both at the same eta and at each method's best eta on the grid.
"""

import numpy as np
import pytest

from alignjax import games

TAU = 0.01
P, MU = games.cyclic_example()
NASH_UNREGULARISED = np.array([0.25, 0.3, 0.35, 0.0, 0.0]) / 0.9


@pytest.fixture(scope='module')
def pi_star():
    return games.regularized_nash(P, MU, TAU)


def kl_curve(target, policies):
    """KL(target || pi_t) for every row (all entries > 0 here), vectorised."""
    return np.sum(target * np.log(target / policies), axis=1)


def steps_to(target, policies, threshold=1e-4):
    """First t from which KL(target || pi_s) < threshold for every s >= t; None if never."""
    above = np.nonzero(kl_curve(target, policies) >= threshold)[0]
    if not len(above):
        return 0
    return int(above[-1]) + 1 if above[-1] + 1 < len(policies) else None


def regularised_payoff(p, opponent, tau=TAU, mu=MU):
    """Row player's payoff P(p > opponent) - tau KL(p || mu), written out independently."""
    return p @ P @ opponent - tau * np.sum(p * np.log(p / mu))


# ----------------------------------------------------------------------------- equilibrium


def test_equilibrium_is_a_fixed_point_and_a_nash_equilibrium(pi_star):
    np.testing.assert_allclose(pi_star.sum(), 1.0, atol=1e-14)
    logits = np.log(MU) + P @ pi_star / TAU
    best = np.exp(logits - logits.max())
    best /= best.sum()
    assert np.max(np.abs(pi_star - best)) < 1e-8  # the fixed point
    # No unilateral deviation gains more than 1e-8: the best response to pi* is `best`.
    gain = regularised_payoff(best, pi_star) - regularised_payoff(pi_star, pi_star)
    assert gain < 1e-8
    assert games.regularized_exploitability(P, MU, TAU, pi_star) < 1e-12
    rng = np.random.default_rng(0)
    for p in rng.dirichlet(np.ones(5), size=200):
        assert regularised_payoff(p, pi_star) <= regularised_payoff(pi_star, pi_star) + 1e-8
    # The minimising player's deviations q: pi*^T P q + tau KL(q || mu) is smallest at q = pi*.
    column = lambda q: pi_star @ P @ q + TAU * np.sum(q * np.log(q / MU))
    for q in rng.dirichlet(np.ones(5), size=200):
        assert column(q) >= column(pi_star) - 1e-8
    # Close to the unregularised equilibrium, with tiny mass on the dominated actions 3 and 4.
    np.testing.assert_allclose(pi_star, NASH_UNREGULARISED, atol=0.02)
    assert pi_star[3] < 1e-6 and pi_star[4] < 1e-6
    assert games.exploitability(P, pi_star) < 0.01


def test_regularized_exploitability_is_the_best_deviation_gain(pi_star):
    for pi in (MU, NASH_UNREGULARISED * 0.9 + 0.02, np.full(5, 0.2)):
        logits = np.log(MU) + P @ pi / TAU
        best = np.exp(logits - logits.max())
        best /= best.sum()
        want = regularised_payoff(best, pi) - regularised_payoff(pi, pi)
        np.testing.assert_allclose(games.regularized_exploitability(P, MU, TAU, pi), want,
                                   rtol=1e-9)
        assert want > 1e-3


def linear_preferences(r, scale):
    """Transitive P_ij = 1/2 + scale (r_i - r_j): P(y > pi) = 1/2 + scale (r_y - E_pi r)."""
    return 0.5 + scale * (r[:, None] - r[None, :])


@pytest.mark.parametrize('tau', [1.0, 0.1, 0.01])
def test_transitive_linear_preferences_give_the_rlhf_closed_form(tau):
    """With linear preferences the game is RLHF with reward scale * r: pi* = mu exp(scale r/tau)."""
    rng = np.random.default_rng(1)
    r, mu = rng.uniform(0, 1, 6), rng.dirichlet(np.ones(6))
    pi = games.regularized_nash(linear_preferences(r, 0.4), mu, tau)
    want = mu * np.exp(0.4 * r / tau)
    np.testing.assert_allclose(pi, want / want.sum(), rtol=1e-9, atol=1e-15)


def test_closed_forms_ties_symmetric_cycle_and_two_actions():
    mu = np.array([0.5, 0.2, 0.3])
    np.testing.assert_allclose(games.regularized_nash(np.full((3, 3), 0.5), mu, 0.01), mu,
                               rtol=1e-12)
    rps = np.array([[0.5, 0.9, 0.1], [0.1, 0.5, 0.9], [0.9, 0.1, 0.5]])
    np.testing.assert_allclose(games.regularized_nash(rps, np.full(3, 1 / 3), 0.01), 1 / 3,
                               rtol=1e-10)
    # Two actions, P_01 = q: the log-odds are log(mu_0 / mu_1) + (q - 1/2) / tau.
    pi = games.regularized_nash([[0.5, 0.7], [0.3, 0.5]], [0.8, 0.2], 0.05)
    np.testing.assert_allclose(np.log(pi[0] / pi[1]), np.log(4.0) + 0.2 / 0.05, rtol=1e-12)


def test_bradley_terry_game_concentrates_on_the_condorcet_winner_as_tau_shrinks():
    r = np.array([0.0, 1.0, 3.0, 2.0])
    bt = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))
    mu = np.full(4, 0.25)
    np.testing.assert_allclose(games.regularized_nash(bt, mu, 1e4), mu, atol=1e-4)
    assert games.regularized_nash(bt, mu, 0.01)[2] > 0.999


def test_random_games_solve_at_small_tau():
    rng = np.random.default_rng(2)
    for _ in range(20):
        upper = np.triu(rng.uniform(0, 1, (6, 6)), 1)
        game = upper + np.tril(1.0 - upper.T, -1) + 0.5 * np.eye(6)
        mu = rng.dirichlet(np.ones(6))
        for tau in (0.3, 0.01, 0.003):
            pi = games.regularized_nash(game, mu, tau)
            assert games.regularized_exploitability(game, mu, tau, pi) < 1e-10


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match='square'):
        games.regularized_nash(np.full((2, 3), 0.5), [0.5, 0.5], 0.1)
    with pytest.raises(ValueError, match=r'P \+ P\^T'):
        games.check_preference_matrix([[0.5, 0.6], [0.6, 0.5]])
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        games.check_preference_matrix([[0.5, 1.2], [-0.2, 0.5]])
    with pytest.raises(ValueError, match='mu'):
        games.regularized_nash(P, np.array([0.5, 0.5, 0.0, 0.0, 0.0]), 0.1)
    with pytest.raises(ValueError, match='tau'):
        games.regularized_nash(P, MU, 0.0)
    with pytest.raises(RuntimeError, match='did not converge'):
        games.regularized_nash(P, MU, TAU, max_iter=1)
    with pytest.raises(ValueError, match='nash_md, nash_mp, omd, sppo, dno, mwu'):
        games.iterate('nash', P, MU, tau=TAU, eta=0.1, steps=1)
    with pytest.raises(ValueError, match='eta \\* tau'):
        games.iterate('nash_md', P, MU, tau=TAU, eta=200.0, steps=1)


# ----------------------------------------------------------------------------- Nash updates


@pytest.mark.parametrize('method,eta,steps', [('nash_md', 0.3, 3000), ('omd', 0.3, 3000),
                                              ('nash_mp', 5.0, 100)])
def test_regularised_methods_reach_the_equilibrium(pi_star, method, eta, steps):
    """The (near-)best step size of each method on the grid in the module docstring."""
    policies = games.iterate(method, P, MU, tau=TAU, eta=eta, steps=steps)
    assert policies.shape == (steps + 1, 5)
    np.testing.assert_allclose(policies.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(policies[0], MU)
    assert games.kl(pi_star, policies[-1]) < 1e-4
    assert games.kl(pi_star, policies[1]) > 0.1  # a start far away: the test can fail
    exact = [games.kl(pi_star, p) for p in policies]
    np.testing.assert_allclose(kl_curve(pi_star, policies), exact, rtol=1e-6, atol=1e-15)


def test_fixed_points(pi_star):
    """pi* is a fixed point of omd and nash_mp; nash_md's constant-eta fixed point is biased."""
    for method in ('omd', 'nash_mp'):
        step = games.iterate(method, P, MU, tau=TAU, eta=0.3, steps=1, pi0=pi_star)[1]
        np.testing.assert_allclose(step, pi_star, rtol=1e-9)
    step = games.iterate('nash_md', P, MU, tau=TAU, eta=0.3, steps=1, pi0=pi_star)[1]
    assert np.max(np.abs(step - pi_star)) > 1e-5  # measured 3.7e-5
    long_run = games.iterate('nash_md', P, MU, tau=TAU, eta=0.3, steps=6000)[-1]
    assert 1e-8 < games.kl(pi_star, long_run) < 1e-5  # measured 1.1e-6


def test_nash_md_one_step_matches_a_direct_computation():
    eta = 0.3
    pi = np.array([0.1, 0.4, 0.2, 0.2, 0.1])
    mix = pi**(1 - eta * TAU) * MU**(eta * TAU)
    mix /= mix.sum()
    want = mix * np.exp(eta * P @ mix)
    got = games.iterate('nash_md', P, MU, tau=TAU, eta=eta, steps=1, pi0=pi)[1]
    np.testing.assert_allclose(got, want / want.sum(), rtol=1e-12)


def test_mirror_prox_needs_fewer_iterations_than_nash_md(pi_star):
    """Steps to KL < 1e-4 at the same eta, and at each method's best eta on one grid."""
    grid = (0.3, 0.4, 0.5, 0.6, 1.0, 2.0, 5.0)
    counts = {}
    for method, steps in (('nash_md', 2500), ('nash_mp', 1000)):  # None: not within `steps`
        for eta in grid:
            counts[method,
                   eta] = steps_to(pi_star,
                                   games.iterate(method, P, MU, tau=TAU, eta=eta, steps=steps))
    best = {
        m: min(c for (k, _), c in counts.items() if k == m and c is not None)
        for m in ('nash_md', 'nash_mp')
    }
    assert counts['nash_mp', 0.3] < counts['nash_md', 0.3] / 2  # measured 856 vs 2095
    assert best['nash_md'] > 2000 and best['nash_mp'] < 25  # measured 2095 and 20
    assert best['nash_mp'] * 50 < best['nash_md']
    assert counts['nash_md', 1.0] is None  # nash_md's step size is capped by the cycle


def test_bradley_terry_rlhf_is_exploitable_while_the_nash_equilibrium_is_not(pi_star):
    for beta in (0.1, 0.05, 0.01):
        pi, r = games.bt_rlhf_policy(P, MU, beta)
        assert np.argmax(pi) == 2 == np.argmax(r)  # collapses onto action 2, which 1 beats
        assert games.exploitability(P, pi) > 0.2  # measured 0.232, 0.250, 0.250
    assert games.exploitability(P, pi_star) < 0.01  # measured 0.0054
    assert abs(r.mean()) < 1e-12
    np.testing.assert_allclose(pi, MU * np.exp(r / 0.01) / np.sum(MU * np.exp(r / 0.01)))


def test_bradley_terry_fit_recovers_a_bradley_terry_reward():
    r = np.array([0.3, -1.0, 2.0, 0.5, -1.8])
    bt = 1.0 / (1.0 + np.exp(-(r[:, None] - r[None, :])))
    _, fitted = games.bt_rlhf_policy(bt, MU, 0.1)
    np.testing.assert_allclose(fitted, r - r.mean(), atol=1e-10)
    # The gradient of the exact expected log-likelihood vanishes at the fit on the cycle game.
    _, fitted = games.bt_rlhf_policy(P, MU, 0.1)
    s = 1.0 / (1.0 + np.exp(-(fitted[:, None] - fitted[None, :])))
    grad = 2 * np.sum(np.outer(MU, MU) * (P - s), axis=1)
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)
    # A finite sample lands near the infinite-data fit.
    _, sampled = games.bt_rlhf_policy(P, MU, 0.1, num_pairs=200_000)
    np.testing.assert_allclose(sampled, fitted, atol=0.05)


def test_multiplicative_weights_last_iterate_cycles_while_the_average_converges():
    eta, steps = 0.2, 2000
    policies = games.iterate('mwu', P, MU, tau=0.0, eta=eta, steps=steps)
    last = np.array([games.exploitability(P, p) for p in policies])
    average = np.array([games.exploitability(P, p) for p in games.average_iterates(policies)])
    window = last[-500:]
    assert window.min() > 0.05 and window.max() > 0.2  # measured 0.072 and 0.246
    assert average[-1] < 0.01  # measured 0.0033
    assert average[-1] < average[steps // 2] < average[steps // 10]  # 0.0033 < 0.010 < 0.021
    np.testing.assert_allclose(games.average_iterates(policies)[-1], NASH_UNREGULARISED, atol=0.02)


def test_sppo_and_dno_are_multiplicative_weights():
    """Both targets are pi_t exp(eta P(. > pi_t)) normalised (DNO's eta is 1 / eta here), so
    without regularisation they follow the same trajectory as mwu, whatever tau says."""
    mwu = games.iterate('mwu', P, MU, tau=0.0, eta=0.2, steps=300)
    for method in ('sppo', 'dno'):
        got = games.iterate(method, P, MU, tau=TAU, eta=0.2, steps=300)
        np.testing.assert_allclose(got, mwu, rtol=1e-12)
    average = games.average_iterates(mwu)
    assert games.exploitability(P, average[-1]) < 0.5 * games.exploitability(P, average[30])


def test_plot_convergence_writes_a_png(tmp_path):
    histories = {
        m: games.iterate(m, P, MU, tau=TAU, eta=0.3, steps=50) for m in ('nash_md', 'nash_mp')
    }
    path = tmp_path / 'convergence.png'
    games.plot_convergence(histories, P, MU, TAU, str(path))
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
