"""Tabular preference games: the exact small-scale ground truth for Nash learning.

A game has n actions (responses to one prompt), a preference matrix P with P[i, j] the
probability that i is preferred to j (P + P^T = 1, diagonal 1/2) and a reference mu (all > 0).
For policies pi, pi': P(y > pi) = (P @ pi)[y] and P(pi > pi') = pi^T P pi'. Everything here is
NumPy float64 and deterministic; updates run in log space.

The tau-regularised game of Munos et al. ("Nash Learning from Human Feedback") is

    max_pi min_pi'  P(pi > pi') - tau KL(pi || mu) + tau KL(pi' || mu).

It is strongly convex-concave and symmetric, so its equilibrium (pi*, pi*) is unique; pi* is the
fixed point pi* = softmax(log mu + P pi* / tau), which `regularized_nash` solves by Newton's
method. `iterate` runs the tabular updates of the Nash family (Nash-MD, Nash mirror prox, online
mirror descent as in INPO, SPPO, DNO, multiplicative weights as in SPO) exactly, so that their
last or average iterates can be compared with pi*.
"""

from __future__ import annotations

import numpy as np
from scipy import special


def cyclic_example() -> tuple[np.ndarray, np.ndarray]:
    """(P, mu) of the 5-action example game: a cycle 0 > 1 (0.85), 1 > 2 (0.75), 2 > 0 (0.8);
    each of 0, 1, 2 beats 3 with 0.65 and 4 with 0.7; 3 beats 4 with 0.6; mu = (0.3, 0.1, 0.2,
    0.15, 0.25). Reward-based optima collapse on one action another beats; at tau = 0.01 the
    regularised equilibrium mixes 0, 1 and 2."""
    P = np.full((5, 5), 0.5)
    wins = [(0, 1, 0.85), (1, 2, 0.75), (2, 0, 0.8), (3, 4, 0.6)]
    wins += [(i, 3, 0.65) for i in range(3)] + [(i, 4, 0.7) for i in range(3)]
    for i, j, p in wins:
        P[i, j], P[j, i] = p, 1.0 - p
    return P, np.array([0.3, 0.1, 0.2, 0.15, 0.25])


def check_preference_matrix(P) -> np.ndarray:
    """Returns P as a float64 array; ValueError unless it is a valid preference matrix."""
    P = np.asarray(P, np.float64)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f'a preference matrix must be square, got shape {P.shape}')
    if np.any(P < 0.0) or np.any(P > 1.0) or not np.all(np.isfinite(P)):
        raise ValueError('preference probabilities must lie in [0, 1]')
    err = np.max(np.abs(P + P.T - 1.0))
    if err > 1e-9:
        raise ValueError(f'P + P^T must equal 1 (so the diagonal is 1/2); max |P + P^T - 1| '
                         f'is {err:.3g}')
    return P


def _check_distribution(p, n: int, name: str) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if p.shape != (n,) or np.any(p <= 0.0) or abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f'{name} must be a strictly positive distribution over {n} actions')
    return p


def _normalize(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities: subtracts logsumexp over the last axis (inline: the loops call it)."""
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def kl(p, q) -> float:
    """KL(p || q) = sum_y p(y) log(p(y) / q(y)), with 0 log 0 = 0."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    return float(np.sum(special.rel_entr(p, q)))


def exploitability(P, pi) -> float:
    """max_y P(y > pi) - 1/2: what the best response wins beyond a tie (0 at a Nash equilibrium
    of the unregularised game, which is symmetric with value 1/2)."""
    return float(np.max(np.asarray(P, np.float64) @ np.asarray(pi, np.float64)) - 0.5)


def best_response(P, mu, tau: float, pi) -> np.ndarray:
    """argmax_p P(p > pi) - tau KL(p || mu) = softmax(log mu + P pi / tau)."""
    return np.exp(_normalize(np.log(mu) + np.asarray(P) @ np.asarray(pi) / tau))


def regularized_exploitability(P, mu, tau: float, pi) -> float:
    """Gain of the best unilateral deviation from (pi, pi) in the regularised game.

    max_p [P(p > pi) - tau KL(p||mu)] - [P(pi > pi) - tau KL(pi||mu)]
        = tau * logsumexp(log mu + P pi / tau) + tau KL(pi||mu) - 1/2 = tau KL(pi || br(pi)),
    half the duality gap of the symmetric profile; zero exactly at pi*.
    """
    P, mu, pi = (np.asarray(a, np.float64) for a in (P, mu, pi))
    best = tau * special.logsumexp(np.log(mu) + P @ pi / tau)
    return float(best + tau * kl(pi, mu) - 0.5)


def regularized_nash(P, mu, tau: float, *, tol: float = 1e-12, max_iter: int = 200) -> np.ndarray:
    """The unique equilibrium pi* of the tau-regularised preference game.

    Solves z = log mu + P softmax(z) / tau (up to a constant) for the logits z of pi* by damped
    Newton steps, with continuation in tau: from tau * 2^k >= 1, where log mu is a good start, tau
    is halved down to the target, each stage starting from the previous solution. Writing
    P = 11^T/2 + A with A antisymmetric, the Jacobian I - A (diag(pi) - pi pi^T) / tau has
    eigenvalues 1 + i*lambda (lambda real), so it is never singular.

    Args:
      P: [n, n] preference matrix.
      mu: [n] reference distribution, all entries > 0.
      tau: KL regularisation, > 0.
      tol: the largest fixed-point residual max_y |pi(y) - softmax(log mu + P pi / tau)(y)|
        accepted. Newton runs to the floating-point floor, about 1e-16 / tau at worst (4e-16 at
        tau = 0.01 on the acceptance game of tests/test_games.py, 3e-12 at tau = 1e-5).
      max_iter: Newton steps allowed per continuation stage.

    Returns:
      pi*, float64 [n].

    Raises:
      RuntimeError: if the fixed-point residual is above tol.
    """
    P = check_preference_matrix(P)
    mu = _check_distribution(mu, P.shape[0], 'mu')
    if tau <= 0:
        raise ValueError(f'tau must be > 0, got {tau}')
    log_mu = np.log(mu)

    def residual(z, t):  # centred: z and z + c are the same policy
        r = z - log_mu - P @ np.exp(z) / t
        return r - r.mean()

    z = _normalize(log_mu)
    stages = [tau]
    while stages[-1] < 1.0:
        stages.append(2.0 * stages[-1])
    for t in reversed(stages):
        r = residual(z, t)
        for _ in range(max_iter):
            if np.max(np.abs(r)) < 1e-14:
                break
            pi = np.exp(z)
            jac = np.eye(len(z)) - P @ (np.diag(pi) - np.outer(pi, pi)) / t
            step = np.linalg.solve(jac, -r)
            for _ in range(60):  # backtrack on the residual norm
                z_new = _normalize(z + step)
                r_new = residual(z_new, t)
                if np.linalg.norm(r_new) < np.linalg.norm(r):
                    break
                step = 0.5 * step
            else:
                break  # no decrease: at the floating-point floor
            z, r = z_new, r_new
    pi = np.exp(z)
    err = np.max(np.abs(pi - best_response(P, mu, tau, pi)))
    if not err <= tol:
        raise RuntimeError(f'regularized_nash did not converge: fixed-point residual {err:.3g} '
                           f'(tau={tau})')
    return pi


METHODS = ('nash_md', 'nash_mp', 'omd', 'sppo', 'dno', 'mwu')


def iterate(method: str, P, mu, *, tau: float, eta: float, steps: int, pi0=None) -> np.ndarray:
    """Runs a tabular Nash-learning update exactly; returns policies [steps + 1, n].

    With f(pi) = P @ pi (each action's win rate against pi), up to normalisation:

    - 'nash_md' (Munos et al., tabular Nash-MD): pi_mix = pi_t^(1 - eta tau) mu^(eta tau);
      pi_{t+1} = pi_mix exp(eta f(pi_mix)). Needs eta tau <= 1. With a constant eta its fixed
      point is pi = softmax(log mu + f(pi_mix) / tau), a slightly biased pi*; the bias vanishes
      as eta -> 0.
    - 'nash_mp' (Nash mirror prox), with a = eta tau:
      pi_{t+1/2} = [pi_t mu^a exp(eta f(pi_t))]^(1/(1+a));
      pi_{t+1} = [pi_t mu^a exp(eta f(pi_{t+1/2}))]^(1/(1+a)). Fixed point pi*; any eta > 0.
    - 'omd' (online mirror descent against pi_t, INPO's target):
      pi_{t+1} = pi_t^(1 - eta tau) mu^(eta tau) exp(eta f(pi_t)). Needs eta tau <= 1; fixed
      point pi*.
    - 'sppo' (SPPO's target): pi_{t+1} = pi_t exp(eta f(pi_t)). Unregularised.
    - 'dno' (DNO's idealised Algorithm 1, Rosset et al. 2024): pi_{t+1} = pi_t exp(r_t / eta_dno)
      with r_t = f(pi_t), i.e. this update with eta = 1 / eta_dno. The paper's learning rate
      eta_dno is the inverse of `eta` here. Unregularised: the subtraction of 1/2 and the
      partition function cancel in the normalisation, so it is the same update as 'sppo' and
      'mwu'. (Its Appendix A extends DNO to regularised preferences with Nash-MD's smoothed
      opponent, i.e. 'nash_md' here (check).)
    - 'mwu' (multiplicative weights self-play, SPO's dynamics): the same update again. Only its
      average iterate (`average_iterates`) approaches a Nash equilibrium; the last one cycles.

    Args:
      method: one of METHODS.
      P: [n, n] preference matrix.
      mu: [n] reference distribution (also the default start pi_0).
      tau: KL regularisation of nash_md, nash_mp and omd; ignored by sppo, dno and mwu.
      eta: step size.
      steps: number of updates.
      pi0: optional starting policy.

    Returns:
      float64 [steps + 1, n]: pi_0, ..., pi_steps.
    """
    if method not in METHODS:
        raise ValueError(f'unknown method {method!r}; known: {", ".join(METHODS)}')
    P = check_preference_matrix(P)
    n = P.shape[0]
    mu = _check_distribution(mu, n, 'mu')
    pi = mu if pi0 is None else _check_distribution(pi0, n, 'pi0')
    if method in ('nash_md', 'omd') and not 0.0 <= eta * tau <= 1.0:
        raise ValueError(f'{method} needs 0 <= eta * tau <= 1, got eta={eta}, tau={tau}')
    log_mu, z = np.log(mu), np.log(pi)
    out = np.empty((steps + 1, n))
    out[0] = pi
    a = eta * tau
    for t in range(steps):
        if method == 'nash_md':
            mix = _normalize((1.0 - a) * z + a * log_mu)
            z = _normalize(mix + eta * P @ np.exp(mix))
        elif method == 'nash_mp':
            base = z + a * log_mu
            half = _normalize((base + eta * P @ np.exp(z)) / (1.0 + a))
            z = _normalize((base + eta * P @ np.exp(half)) / (1.0 + a))
        elif method == 'omd':
            z = _normalize((1.0 - a) * z + a * log_mu + eta * P @ np.exp(z))
        else:  # sppo, dno, mwu
            z = _normalize(z + eta * P @ np.exp(z))
        out[t + 1] = np.exp(z)
    return out


def average_iterates(policies) -> np.ndarray:
    """Running means: row t is the average of policies[0 .. t]."""
    policies = np.asarray(policies, np.float64)
    return np.cumsum(policies, axis=0) / np.arange(1, len(policies) + 1)[:, None]


def bt_rlhf_policy(P, mu, beta: float, *, num_pairs: int | None = None,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RLHF through a Bradley-Terry reward: fit r on pairs from mu x mu, then the KL optimum.

    Maximises L(r) = sum_{i,j} W_ij log sigmoid(r_i - r_j), where W_ij is the frequency of "i
    preferred to j" among the pairs. With num_pairs=None the data are infinite and exact:
    W_ij = 2 mu_i mu_j P_ij (pairs (i, j) and (j, i) both drawn from mu x mu), i.e. the expected
    log-likelihood sum_{i,j} mu_i mu_j [P_ij log sigma(r_i - r_j) + P_ji log sigma(r_j - r_i)].
    Otherwise num_pairs pairs are drawn from mu x mu and labelled by P with a seeded generator.
    L is concave; Newton's method with backtracking runs until the gradient is below 1e-12.

    Args:
      P: [n, n] preference matrix.
      mu: [n] reference distribution.
      beta: KL coefficient of the RLHF objective E_pi[r] - beta KL(pi || mu).
      num_pairs: None for the exact expected likelihood, else a finite sample size.
      seed: seed of the finite sample.

    Returns:
      (pi, r): pi = softmax(log mu + r / beta) and the reward r, gauged to mean 0.
    """
    P = check_preference_matrix(P)
    n = P.shape[0]
    mu = _check_distribution(mu, n, 'mu')
    if num_pairs is None:
        wins = 2.0 * np.outer(mu, mu) * P
    else:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(num_pairs, np.outer(mu, mu).ravel()).reshape(n, n)
        first = rng.binomial(counts, P)  # first element of the pair preferred
        wins = (first + (counts - first).T) / num_pairs
    np.fill_diagonal(wins, 0.0)

    def loglik(r):
        return np.sum(wins * special.log_expit(r[:, None] - r[None, :]))

    r = np.zeros(n)
    for _ in range(200):
        s = special.expit(r[:, None] - r[None, :])  # s_ij = sigma(r_i - r_j)
        g = wins * (1.0 - s)
        grad = g.sum(1) - g.sum(0)
        if np.max(np.abs(grad)) < 1e-12:
            break
        c = (wins + wins.T) * s * s.T  # curvature weights of the Laplacian -Hessian
        lap = np.diag(c.sum(1)) - c
        step = np.linalg.solve(lap + np.ones((n, n)), grad)  # fixes the gauge: sum(step) = 0
        base = loglik(r)
        while loglik(r + step) < base and np.max(np.abs(step)) > 1e-15:
            step = 0.5 * step
        r = r + step
    else:
        raise RuntimeError('Bradley-Terry fit did not converge (a pair always won, or the '
                           'comparison graph is disconnected: draw more pairs)')
    r = r - r.mean()
    return np.exp(_normalize(np.log(mu) + r / beta)), r


def plot_convergence(histories: dict[str, np.ndarray], P, mu, tau: float, path: str) -> None:
    """Writes a PNG of KL(pi* || pi_t) and exploitability(pi_t) against iteration t.

    Args:
      histories: name -> policies [T + 1, n] (e.g. from `iterate` or `average_iterates`).
      P, mu, tau: the game; pi* = regularized_nash(P, mu, tau).
      path: output file.
    """
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    target = regularized_nash(P, mu, tau)
    fig, (ax_kl, ax_ex) = plt.subplots(1, 2, figsize=(10, 4))
    for name, policies in histories.items():
        steps = np.arange(len(policies))
        ax_kl.semilogy(steps, [max(kl(target, p), 1e-16) for p in policies], label=name)
        ax_ex.plot(steps, [exploitability(P, p) for p in policies], label=name)
    ax_kl.set(xlabel='iteration', ylabel='KL(pi* || pi_t)', title=f'tau = {tau:g}')
    ax_ex.set(xlabel='iteration', ylabel='exploitability', title='max_y P(y > pi_t) - 1/2')
    ax_ex.axhline(exploitability(P, target), color='k', ls=':', label='pi*')
    ax_ex.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
