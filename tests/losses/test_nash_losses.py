"""The LM-form Nash objectives of alignjax.losses.nash reproduce the exact tabular updates.

A softmax table stands in for a language model: theta [n] are logits, pi = softmax(theta), the
"responses" are the n actions and a response's log-prob sum is log pi[y]. Each expected loss is
computed exactly by enumerating responses and pairs as rows of a batch, with their sampling
probabilities as the row weights (no Monte Carlo), in float64; it is then minimised by Newton's
method (the Hessian from jax.hessian, the gradient from the loss itself or, for the
policy-gradient methods, from the REINFORCE surrogate) and the minimiser is compared with
`alignjax.games.iterate` one step from a non-trivial pi_t (not mu).

Games: the 5-action acceptance game of tests/test_games.py (tau = 0.01) and a random 5-action
game (tau = 0.3; the same size, so that both share every compilation). x64 is switched on by a
context manager around each test only.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from alignjax import games
from alignjax.losses import nash

_sg = jax.lax.stop_gradient


def make_random_game(n=5, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, n))
    P = special.expit(s - s.T)  # P + P^T = 1, diagonal 1/2
    mu = rng.dirichlet(3.0 * np.ones(n))
    pi_t = rng.dirichlet(3.0 * np.ones(n))
    return P, mu, pi_t


# name -> (P, mu, pi_t, tau); pi_t is a non-trivial previous iterate, not mu.
GAMES = {
    'acceptance': (*games.cyclic_example(), np.array([0.22, 0.18, 0.3, 0.2, 0.1]), 0.01),
    'random5': (*make_random_game(), 0.3),
}


@pytest.fixture(autouse=True)
def x64():
    """float64 for this module's tests only (the context manager restores the setting)."""
    with jax.enable_x64(True):
        yield


def pairs(n):
    """All ordered pairs (y, y') as two int arrays [n * n]."""
    y, y2 = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
    return y.ravel(), y2.ravel()


def loss_mean(out):
    total, count = out
    return total / count


def newton_minimise(value_and_grad, theta0, *args, tol=1e-13, max_iter=100):
    """Minimises f(theta) of a policy softmax(theta); value_and_grad(theta, *args) -> (f, grad).

    Newton's method with the Hessian from central differences of the (exact, jitted) gradient,
    so only the gradient is compiled: the Hessian's O(1e-9) error slows the final convergence
    to linear at that rate, while the stationary point found is that of the exact gradient. The
    objectives depend on theta only through softmax(theta), so the Hessian is singular along the
    all-ones direction and the gradient is orthogonal to it; H + 11^T is regular and gives the
    pseudo-inverse step (a gradient step where that is not a descent direction). Armijo
    backtracking on f; once f changes only by rounding, on the gradient norm.

    Returns:
      (theta, max |grad|) at the last iterate: below tol, or at the floating-point floor.
    """
    def evaluate(theta):
        f, g = value_and_grad(theta, *args)
        return float(f), np.asarray(g, np.float64)

    theta = np.asarray(theta0, np.float64)
    n = len(theta)
    f, g = evaluate(theta)
    for _ in range(max_iter):
        if np.max(np.abs(g)) < tol:
            break
        eye = 1e-5 * np.eye(n)
        hess = np.stack([evaluate(theta + e)[1] - evaluate(theta - e)[1] for e in eye]) / 2e-5
        step = -np.linalg.solve(0.5 * (hess + hess.T) + np.ones((n, n)), g)
        if g @ step >= 0:
            step = -g
        for _ in range(60):
            f_new, g_new = evaluate(theta + step)
            if f_new <= f + 1e-4 * (g @ step) or (abs(f_new - f) <= 1e-14 * (1 + abs(f))
                                                  and np.linalg.norm(g_new) < np.linalg.norm(g)):
                break
            step = 0.5 * step
        else:
            break
        theta, f, g = theta + step, f_new, g_new
    return theta, float(np.max(np.abs(g)))


def jitted(fn, **coefficients):
    """fn with its keyword coefficients fixed, jitted: one compile rather than one per op."""
    return jax.jit(functools.partial(fn, **coefficients))


def softmax(theta):
    return np.exp(theta - special.logsumexp(theta))


def fisher(pi):
    return np.diag(pi) - np.outer(pi, pi)


def natural_direction(pi, g):
    """d with F d = -g and sum(d) = 0 (F = diag(pi) - pi pi^T, the softmax Fisher matrix)."""
    return -np.linalg.solve(fisher(pi) + np.ones((len(pi), len(pi))), g)


# The expected objectives as functions of theta and the enumerated batch. They are jitted once
# at module level, with the data and coefficients as arguments, so that the tests of one game
# size share one compilation.


def _nash_md_advantages(theta, P, mix, log_mu, tau):
    """A(y) = E_{y' ~ pi_mix} nash_md_advantages(P(y > y'), ...), [n]."""
    n = theta.shape[0]
    y, y2 = pairs(n)
    logpi = jax.nn.log_softmax(theta)
    adv = nash.nash_md_advantages(P[y, y2], logpi[y], log_mu[y], tau=tau)
    return jnp.sum((mix[y2] * adv).reshape(n, n), axis=1)


def _nash_md_surrogate(theta, P, mix, log_mu, tau):
    """-sum_y sg(pi(y)) sg(A(y)) log pi(y): y is sampled and A is an advantage."""
    logpi = jax.nn.log_softmax(theta)
    return -jnp.sum(_sg(jnp.exp(logpi)) * _nash_md_advantages(theta, P, mix, log_mu, tau) * logpi)


nash_md_advantages_and_grad = jax.jit(
    lambda *args: (_nash_md_advantages(*args), jax.grad(_nash_md_surrogate)(*args)))


def _proximal_pair_advantages(theta, P, log_mu, log_anchor, tau, eta):
    """[n, n] proximal_advantages of y (row) against an opponent sample y' (column)."""
    n = theta.shape[0]
    y, y2 = pairs(n)
    logpi = jax.nn.log_softmax(theta)
    adv = nash.proximal_advantages(P[y, y2], logpi[y], log_mu[y], log_anchor[y], tau=tau, eta=eta)
    return adv.reshape(n, n)


def _proximal_objective(theta, P, opponent, log_mu, log_anchor, tau, eta):
    """-(E_pi P(y > opp) - tau KL(pi || mu) - KL(pi || pi_t) / eta), written out."""
    logpi = jax.nn.log_softmax(theta)
    pi = jnp.exp(logpi)
    return -(pi @ P @ opponent - tau * pi @ (logpi - log_mu) - pi @ (logpi - log_anchor) / eta)


def _proximal_surrogate(theta, P, opponent, log_mu, log_anchor, tau, eta):
    """REINFORCE with y ~ pi and y' ~ opponent (both constants), proximal_advantages."""
    y, _ = pairs(theta.shape[0])
    logpi = jax.nn.log_softmax(theta)
    weight = (_sg(jnp.exp(logpi))[:, None] * opponent[None, :]).ravel()
    adv = _proximal_pair_advantages(theta, P, log_mu, log_anchor, tau, eta).ravel()
    return -jnp.sum(weight * adv * logpi[y])


proximal_value_and_surrogate_grad = jax.jit(
    lambda *args: (_proximal_objective(*args), jax.grad(_proximal_surrogate)(*args)))
proximal_exact_grad = jax.jit(jax.grad(_proximal_objective))
proximal_pair_advantages = jax.jit(_proximal_pair_advantages)


def _inpo_objective(theta, win, lose, log_mu, log_anchor, weight, prob_w, eta, tau):
    logpi = jax.nn.log_softmax(theta)
    return loss_mean(
        nash.inpo_loss(logpi[win], logpi[lose], log_mu[win], log_mu[lose], log_anchor[win],
                       log_anchor[lose], eta=eta, tau=tau, prob_w=prob_w, weight=weight))


def _dno_objective(theta, a, b, log_anchor, target, weight, eta):
    logpi = jax.nn.log_softmax(theta)
    return loss_mean(
        nash.dno_loss(logpi[a], logpi[b], log_anchor[a], log_anchor[b], target, eta=eta,
                      weight=weight))


def _sppo_objective(theta, log_anchor, win_rate, weight, log_partition, eta):
    logpi = jax.nn.log_softmax(theta)
    return loss_mean(
        nash.sppo_loss(logpi, log_anchor, win_rate, eta=eta, log_partition=log_partition,
                       weight=weight))


def _online_ipo_objective(theta, a, b, log_mu, prob_a, weight, tau):
    logr = jax.nn.log_softmax(theta) - log_mu
    return loss_mean(nash.online_ipo_loss(logr[a], logr[b], prob_a, tau=tau, weight=weight))


inpo_objective = jax.jit(jax.value_and_grad(_inpo_objective))
dno_objective = jax.jit(jax.value_and_grad(_dno_objective))
sppo_objective = jax.jit(jax.value_and_grad(_sppo_objective))
online_ipo_objective = jax.jit(jax.value_and_grad(_online_ipo_objective))

# ------------------------------------------------------------------------------------ Nash-MD


@pytest.mark.parametrize('name,eta', [('acceptance', 0.5), ('acceptance', 50.0), ('random5', 1.0)])
def test_nash_md_natural_gradient_step_is_the_tabular_step(name, eta):
    P, mu, pi_t, tau = GAMES[name]
    a = eta * tau
    mix = softmax((1.0 - a) * np.log(pi_t) + a * np.log(mu))  # pi_t^(1 - eta tau) mu^(eta tau)
    theta = np.log(pi_t)
    adv, g = (np.asarray(x) for x in nash_md_advantages_and_grad(theta, P, mix, np.log(mu), tau))
    np.testing.assert_allclose(g, -pi_t * (adv - pi_t @ adv), rtol=0, atol=1e-15)
    direction = natural_direction(pi_t, g)
    np.testing.assert_allclose(direction, adv - adv.mean(), rtol=0, atol=1e-12)
    got = softmax(theta + eta * direction)
    want = games.iterate('nash_md', P, mu, tau=tau, eta=eta, steps=1, pi0=pi_t)[1]
    err = np.max(np.abs(got - want))
    assert err < 1e-10, err  # measured: <= 1.2e-16


# ------------------------------------------------------------------------------------ Nash-MP


def proximal_step(P, mu, tau, eta, anchor, opponent):
    """[anchor mu^(eta tau) exp(eta P(. > opponent))]^(1 / (1 + eta tau)), written out."""
    a = eta * tau
    return softmax((np.log(anchor) + a * np.log(mu) + eta * P @ opponent) / (1.0 + a))


@pytest.mark.parametrize('name,eta', [('acceptance', 1.0), ('acceptance', 5.0), ('random5', 0.7)])
def test_nash_mp_two_proximal_phases_are_the_mirror_prox_step(name, eta):
    P, mu, pi_t, tau = GAMES[name]
    log_mu, log_anchor = np.log(mu), np.log(pi_t)

    def phase(opponent):
        args = (P, opponent, log_mu, log_anchor, tau, eta)
        start = np.log(mu)  # any start: the objective is maximised exactly
        _, surrogate_grad = proximal_value_and_surrogate_grad(start, *args)
        np.testing.assert_allclose(surrogate_grad, proximal_exact_grad(start, *args), rtol=0,
                                   atol=1e-14)
        # Newton on the exact objective, driven by the surrogate's gradient.
        theta, gmax = newton_minimise(proximal_value_and_surrogate_grad, start, *args)
        assert gmax < 1e-13, gmax
        # At the maximiser the expected advantage is the same for every action.
        advantages = np.asarray(proximal_pair_advantages(theta, P, log_mu, log_anchor, tau, eta))
        assert np.ptp(advantages @ opponent) < 1e-11, advantages @ opponent
        return softmax(theta)

    half = phase(pi_t)
    np.testing.assert_allclose(half, proximal_step(P, mu, tau, eta, pi_t, pi_t), rtol=0, atol=1e-12)
    full = phase(half)
    want = games.iterate('nash_mp', P, mu, tau=tau, eta=eta, steps=1, pi0=pi_t)[1]
    err = np.max(np.abs(full - want))
    assert err < 1e-8, err  # measured: 1.5e-16, 1.4e-13 (eta 5), 5.6e-17


# ------------------------------------------------------------------------------------ INPO


def inpo_rows(P, pi_t):
    """Hard-labelled rows (winner, loser, weight) of pairs (y, y') ~ pi_t x pi_t labelled by P."""
    y, y2 = pairs(len(pi_t))
    w = pi_t[y] * pi_t[y2]
    winners = np.concatenate([y, y2])
    losers = np.concatenate([y2, y])
    weights = np.concatenate([w * P[y, y2], w * P[y2, y]])
    return winners, losers, weights


@pytest.mark.parametrize('name,eta', [('acceptance', 0.5), ('acceptance', 30.0), ('random5', 1.0)])
def test_inpo_minimiser_is_online_mirror_descent(name, eta):
    P, mu, pi_t, tau = GAMES[name]
    log_mu, log_anchor = np.log(mu), np.log(pi_t)
    win, lose, weight = inpo_rows(P, pi_t)
    hard_args = (win, lose, log_mu, log_anchor, weight, None, eta, tau)
    theta, gmax = newton_minimise(inpo_objective, np.log(mu), *hard_args)
    assert gmax < 1e-13, gmax
    want = games.iterate('omd', P, mu, tau=tau, eta=eta, steps=1, pi0=pi_t)[1]
    err = np.max(np.abs(softmax(theta) - want))
    assert err < 1e-6, err  # measured: <= 2.5e-16

    # Soft labels: one row per draw (y, y'), prob_w = P(y > y'), equals the hard rows in
    # expectation over the label, in value and gradient.
    y, y2 = pairs(len(mu))
    soft_args = (y, y2, log_mu, log_anchor, pi_t[y] * pi_t[y2], P[y, y2], eta, tau)
    probe = np.random.default_rng(1).standard_normal(len(mu))
    soft_value, soft_grad = inpo_objective(probe, *soft_args)
    hard_value, hard_grad = inpo_objective(probe, *hard_args)
    np.testing.assert_allclose(soft_value, hard_value, rtol=1e-13)
    np.testing.assert_allclose(soft_grad, hard_grad, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------ DNO


@pytest.mark.parametrize('name,eta_dno', [('acceptance', 2.0), ('acceptance', 0.05),
                                          ('random5', 0.5)])
def test_dno_minimiser_is_the_multiplicative_weights_step(name, eta_dno):
    P, mu, pi_t, _ = GAMES[name]
    a, b = pairs(len(mu))
    r_t = P @ pi_t  # r_t(y) = P(y > pi_t)
    target = np.asarray(nash.dno_target(r_t[a], r_t[b]))
    np.testing.assert_allclose(target, special.expit(r_t[a] - r_t[b]), rtol=1e-15)
    theta, gmax = newton_minimise(dno_objective, np.log(mu), a, b, np.log(pi_t), target,
                                  pi_t[a] * pi_t[b], eta_dno)
    assert gmax < 1e-13, gmax
    # games' eta is the paper's 1 / eta_dno.
    want = games.iterate('dno', P, mu, tau=0.0, eta=1.0 / eta_dno, steps=1, pi0=pi_t)[1]
    err = np.max(np.abs(softmax(theta) - want))
    assert err < 1e-6, err  # measured: <= 8e-16


# ------------------------------------------------------------------------------------ SPPO


# Measured KL(exact step || practical minimiser) and max |difference| of the probabilities:
# 2.7e-8 and 6.4e-5 (acceptance, eta 1), 2.1e-3 and 2.4e-2 (acceptance, eta 10), 5.3e-7 and
# 3.3e-4 (random5, eta 2). The error grows with log Z - eta/2 (3e-3, 0.24, 8e-3 there), which
# is about eta^2 Var_{pi_t}(P(y > pi_t)) / 2 since E_{pi_t} P(y > pi_t) = 1/2.
@pytest.mark.parametrize('name,eta,kl_bound', [('acceptance', 1.0, 3e-7),
                                               ('acceptance', 10.0, 2e-2), ('random5', 2.0, 5e-6)])
def test_sppo_minimiser_exact_with_the_partition_function_close_with_eta_over_2(
        name, eta, kl_bound):
    P, mu, pi_t, _ = GAMES[name]
    n = len(mu)
    win_rate = P @ pi_t  # P(y > pi_t); the rows are the n actions, weighted by pi_t
    log_z = special.logsumexp(np.log(pi_t) + eta * win_rate)  # log E_{pi_t} exp(eta P(y > pi_t))
    want = games.iterate('sppo', P, mu, tau=0.0, eta=eta, steps=1, pi0=pi_t)[1]

    exact_args = (np.log(pi_t), win_rate, pi_t, np.full(n, log_z), eta)
    theta, gmax = newton_minimise(sppo_objective, np.log(pi_t), *exact_args)
    assert gmax < 1e-13, gmax
    err = np.max(np.abs(softmax(theta) - want))
    assert err < 1e-6, err  # measured: <= 3e-15
    assert float(sppo_objective(theta, *exact_args)[0]) < 1e-28  # the target is reachable

    theta, gmax = newton_minimise(sppo_objective, np.log(pi_t), np.log(pi_t), win_rate, pi_t, None,
                                  eta)
    assert gmax < 1e-13, gmax
    approx = softmax(theta)
    assert games.kl(want, approx) < kl_bound, games.kl(want, approx)
    assert np.max(np.abs(approx - want)) > 1e-5  # an approximation, not the update


def test_sppo_log_partition_is_consistent_and_biased():
    P, _, pi_t, _ = GAMES['acceptance']
    eta = 2.0
    f = P @ pi_t
    log_z = special.logsumexp(np.log(pi_t) + eta * f)
    # Biased for finite k: exact expectation over all groups of k = 2 i.i.d. samples from pi_t,
    # with exact win rates, is below log Z (Jensen).
    y, y2 = pairs(len(pi_t))
    groups = np.stack([f[y], f[y2]], axis=1)
    estimate = np.asarray(jitted(nash.sppo_log_partition, eta=eta)(groups))
    np.testing.assert_allclose(estimate,
                               np.logaddexp(eta * f[y], eta * f[y2]) - np.log(2.0), rtol=1e-14)
    bias = float(np.sum(pi_t[y] * pi_t[y2] * estimate)) - log_z
    assert -2e-2 < bias < -1e-3, bias  # measured: -5.8e-3
    # Consistent: one seeded group of 200,000 samples; the standard error of the estimate is
    # about std(exp(eta f)) / (sqrt(k) E exp(eta f)) = 3.3e-4 here, so 3e-3 is nine of them
    # (measured error: 4.1e-4).
    rng = np.random.default_rng(0)
    sample = rng.choice(len(pi_t), size=200_000, p=pi_t)
    big = float(jitted(nash.sppo_log_partition, eta=eta)(f[sample][None, :])[0])
    assert abs(big - log_z) < 3e-3, (big, log_z)


# ------------------------------------------------------------------------------------ SPO


@pytest.mark.parametrize('name,eta', [('acceptance', 1.0), ('random5', 3.0)])
def test_spo_group_win_rates_are_unbiased_and_give_the_mwu_step(name, eta):
    P, mu, pi_t, _ = GAMES[name]
    n, k = len(mu), 3
    f = P @ pi_t
    # All groups of k i.i.d. samples from pi_t, with their probabilities.
    groups = np.array(list(itertools.product(range(n), repeat=k)))  # [n^k, k]
    prob = np.prod(pi_t[groups], axis=1)
    matrices = P[groups[:, :, None], groups[:, None, :]]  # [n^k, k, k]
    wins = np.asarray(nash.group_win_rates(matrices))
    for i in range(k):  # E[w_i | y_i = y] = P(y > pi_t), exactly
        conditional = np.bincount(groups[:, i], weights=prob * wins[:, i], minlength=n) / pi_t
        np.testing.assert_allclose(conditional, f, rtol=0, atol=1e-15)
    # The expected REINFORCE gradient with advantage w - 1/2 over every sample of every group,
    # by the softmax score grad log pi(y) = e_y - pi: the exact gradient -pi (f - E_pi f).
    score = np.eye(n)[groups] - pi_t  # [n^k, k, n]
    g = -np.einsum('g,gi,gin->n', prob, wins - 0.5, score) / k
    np.testing.assert_allclose(g, -pi_t * (f - pi_t @ f), rtol=0, atol=1e-15)
    got = softmax(np.log(pi_t) + eta * natural_direction(pi_t, g))
    want = games.iterate('mwu', P, mu, tau=0.0, eta=eta, steps=1, pi0=pi_t)[1]
    err = np.max(np.abs(got - want))
    assert err < 1e-10, err  # measured: <= 1.4e-16


# ------------------------------------------------------------------------------------ online IPO


@pytest.mark.parametrize('name', ['acceptance', 'random5'])
def test_online_ipo_minimiser_is_the_best_response_and_nash_is_its_fixed_point(name):
    P, mu, pi_t, tau = GAMES[name]
    a, b = pairs(len(mu))

    def minimiser(sampler):
        theta, _ = newton_minimise(online_ipo_objective, np.log(mu), a, b, np.log(mu), P[a, b],
                                   sampler[a] * sampler[b], tau)
        return softmax(theta)

    best = games.best_response(P, mu, tau, pi_t)  # mu exp(P(. > pi_t) / tau), normalised
    err = np.max(np.abs(minimiser(pi_t) - best))
    assert err < 1e-6, err  # measured: 1.9e-16 (acceptance), 5.6e-17 (random5)
    pi_star = games.regularized_nash(P, mu, tau)
    err = np.max(np.abs(minimiser(pi_star) - pi_star))
    assert err < 1e-6, err  # measured: 1.7e-15 (acceptance), 1.7e-16 (random5)
