"""Nash-learning objectives in LM form: advantages and losses on per-sequence log-prob sums.

Notation (DESIGN.md, "Objectives"): for a prompt x and responses y, logp = log pi(y | x) is the
sum over response tokens of the trained policy's log-probs, ref_logp the same under the frozen
reference mu, anchor_logp the same under the previous iterate pi_t (the policy that sampled the
batch, frozen for the outer step). A preference model (or a gold function) gives probabilities
P(y > y') with P(y > y') + P(y' > y) = 1, and P(y > pi) = E_{y' ~ pi} P(y > y') is the win rate
of y against a policy. tau is the KL regularisation towards mu, eta a step size.

Each objective is the sample form of one tabular update of `alignjax.games.iterate`: minimised
exactly over a softmax table (tests/losses/test_nash_losses.py) it gives that update's next policy.

    advantage / loss          sampling                        tabular update
    nash_md_advantages        y ~ pi, y' ~ pi^(1-m) mu^m      iterate('nash_md'), m = eta tau
    proximal_advantages       y ~ pi, y' ~ opponent           iterate('nash_mp'), each phase
    inpo_loss                 (y, y') ~ pi_t x pi_t           iterate('omd')
    dno_loss                  (y, y') ~ pi_t x pi_t           iterate('dno'), eta = 1 / eta_dno
    sppo_loss                 y ~ pi_t                        iterate('sppo')
    group_win_rates           k samples ~ pi_t per prompt     iterate('mwu') (SPO's reward)
    online_ipo_loss           (y, y') ~ pi_t x pi_t           best response to pi_t; fixed point
                                                              regularized_nash

Advantages are returned under stop-gradient: they are fed to a REINFORCE or clipped-ratio loss
(`losses.policy_gradient`) with the sampling weights also treated as constants. Losses return
(sum, count) with count = sum of the row weights, so that gradient accumulation over
microbatches divides once. Row weights mask padding (0 rows contribute neither value nor
gradient, whatever their inputs hold) and may also be any non-negative importance weights.
Shapes are written [B]; any common (broadcastable) shape works, e.g. [G, k] for k responses per
prompt. Inputs keep their float dtype (float64 in, float64 out; float32 or lower gives float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_sg = jax.lax.stop_gradient


def _concrete(value):
    """The Python float of a coefficient, or None when it is traced (unchecked then)."""
    try:
        return float(np.asarray(value))
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _check_positive(fn: str, **coefficients) -> None:
    for name, value in coefficients.items():
        v = _concrete(value)
        if v is not None and not v > 0:
            raise ValueError(f'{fn}: {name} must be > 0, got {value}')


def _rows(weight, *arrays):
    """Inputs as arrays of one float dtype, zeroed on rows of weight 0, and the weights."""
    arrays = [jnp.asarray(a) for a in arrays]
    dtype = jnp.result_type(*arrays, jnp.float32)
    arrays = [a.astype(dtype) for a in arrays]
    shape = jnp.broadcast_shapes(*(a.shape for a in arrays))
    if weight is None:
        weight = jnp.ones(shape, dtype)
    weight = jnp.broadcast_to(jnp.asarray(weight, dtype), shape)
    valid = weight > 0
    # Padding may hold garbage (inf, nan): zero it before any arithmetic, so that neither the
    # value nor the gradient can pick it up.
    return [jnp.where(valid, a, 0.0) for a in arrays], weight, valid


def _reduce(per_row, weight, valid):
    return jnp.sum(jnp.where(valid, per_row, 0.0) * weight), jnp.sum(weight)


def nash_md_advantages(preference, logp, ref_logp, *, tau):
    """Sequence advantages of Nash-MD-PG: the preference reward minus the KL penalty.

    Munos et al. 2023, "Nash Learning from Human Feedback" (Nash-MD-PG). The policy
    pi plays y ~ pi against an opponent y' drawn from the geometric mixture
    pi_mix(y') ∝ pi(y')^(1-m) mu(y')^m (sampled elsewhere, token by token), and maximises
    E_{y ~ pi, y' ~ pi_mix} P(y > y') - tau KL(pi || mu). Its policy gradient is
    E_{y ~ pi}[A(y) grad log pi(y)] with

        A(y) = (P(y > y') - 1/2) - tau * (log pi(y) - log mu(y)),

    the 1/2 being a baseline. Averaged over y' ~ pi_mix, the natural-gradient step
    theta + eta A at pi = pi_t with m = eta * tau is exactly the tabular Nash-MD step
    pi_{t+1} ∝ pi_mix exp(eta P(. > pi_mix)) of games.iterate('nash_md').

    Args:
      preference: [B] P(y > y') of each sampled pair.
      logp: [B] log pi(y).
      ref_logp: [B] log mu(y).
      tau: KL coefficient.

    Returns:
      [B] advantages, under stop-gradient.
    """
    preference, logp, ref_logp = (jnp.asarray(a) for a in (preference, logp, ref_logp))
    return _sg((preference - 0.5) - tau * (logp - ref_logp))


def proximal_advantages(preference, logp, ref_logp, anchor_logp, *, tau, eta):
    """Per-sample reward of one proximal phase of Nash mirror prox (Nash-MP).

    Each phase of Nash mirror prox (Tiapkin et al. 2025, "Accelerating Nash Learning from Human
    Feedback via Mirror Prox"; its practical version runs one policy-gradient phase per half
    step) maximises

        J(pi) = E_{y ~ pi} P(y > opponent) - tau KL(pi || mu) - (1 / eta) KL(pi || pi_t),

    whose maximiser is [pi_t mu^(eta tau) exp(eta P(. > opponent))]^(1 / (1 + eta tau)). The
    first phase plays against pi_t and gives the half step pi_{t+1/2}; the second plays against
    pi_{t+1/2}, still anchored at pi_t, and gives pi_{t+1} (games.iterate('nash_mp')). With
    y' ~ opponent,

        A(y) = (P(y > y') - 1/2) - tau (log pi(y) - log mu(y)) - (1/eta) (log pi(y) - log pi_t(y))

    has E_{y ~ pi}[A(y) grad log pi(y)] = grad J(pi) (the terms from differentiating A itself
    average to zero), and at the maximiser A averaged over y' is the same for every y.

    Args:
      preference: [B] P(y > y') against an opponent sample.
      logp: [B] log pi(y).
      ref_logp: [B] log mu(y).
      anchor_logp: [B] log pi_t(y).
      tau: KL coefficient towards mu.
      eta: step size; 1 / eta is the coefficient of the proximal KL to pi_t.

    Returns:
      [B] advantages, under stop-gradient.
    """
    _check_positive('proximal_advantages', eta=eta)
    preference, logp, ref_logp, anchor_logp = (
        jnp.asarray(a) for a in (preference, logp, ref_logp, anchor_logp))
    return _sg((preference - 0.5) - tau * (logp - ref_logp) - (logp - anchor_logp) / eta)


def group_win_rates(preference_matrix):
    """Each sample's mean win rate against the other samples of its group.

    SPO (Swamy et al. 2024, "A Minimaximalist Approach to Reinforcement Learning from Human
    Feedback"): the reward of y_i is (1 / (k-1)) sum_{j != i} P(y_i > y_j). With the k samples
    of a group drawn i.i.d. from pi_t it is an unbiased estimate of P(y_i > pi_t), the win rate
    SPPO regresses on (Wu et al. 2024) and DNO's r_t (Rosset et al. 2024).

    Args:
      preference_matrix: [G, k, k] with entry [g, i, j] = P(y_gi > y_gj); the diagonal is
        ignored (it may hold anything).

    Returns:
      [G, k] win rates.

    Raises:
      ValueError: unless the input is [G, k, k] with k >= 2.
    """
    m = jnp.asarray(preference_matrix)
    if m.ndim != 3 or m.shape[1] != m.shape[2]:
        raise ValueError(f'group_win_rates: expected [G, k, k], got shape {m.shape}')
    k = m.shape[1]
    if k < 2:
        raise ValueError(f'group_win_rates: a group needs k >= 2 samples, got k={k}')
    off_diagonal = ~jnp.eye(k, dtype=bool)
    return jnp.sum(jnp.where(off_diagonal, m, 0.0), axis=-1) / (k - 1)


def inpo_loss(logp_w, logp_l, ref_w, ref_l, anchor_w, anchor_l, *, eta, tau, prob_w=None,
              weight=None):
    """INPO's squared loss on labelled pairs sampled from the current iterate pi_t.

    Zhang et al. 2024, "Iterative Nash Policy Optimization: Aligning LLMs with General
    Preferences via No-Regret Learning". With

        h = log pi(y_w)/pi(y_l) - eta tau log mu(y_w)/mu(y_l) - (1 - eta tau) log pi_t(y_w)/pi_t(y_l),

    a pair labelled "y_w wins" costs (h - eta/2)^2. With a soft label p = prob_w, the
    probability that the first response wins, the loss is its expectation over the label,

        p (h - eta/2)^2 + (1 - p) (h + eta/2)^2,

    (the hard loss at p = 1). Over pairs (y, y') ~ pi_t x pi_t labelled by P its minimiser is
    online mirror descent against pi_t, pi_{t+1} ∝ pi_t^(1 - eta tau) mu^(eta tau)
    exp(eta P(. > pi_t)) (games.iterate('omd')), whose fixed point is the regularised Nash
    equilibrium.

    Args:
      logp_w, logp_l: [B] log pi of the first (winning) and second response.
      ref_w, ref_l: [B] log mu of the same.
      anchor_w, anchor_l: [B] log pi_t of the same.
      eta: step size (> 0).
      tau: KL coefficient towards mu.
      prob_w: None (hard labels: the first response won), or [B] the probability that it wins.
      weight: None, or [B] row weights (0 for padding).

    Returns:
      (loss_sum, count) with count = sum of weights.
    """
    _check_positive('inpo_loss', eta=eta)
    (logp_w, logp_l, ref_w, ref_l, anchor_w, anchor_l,
     p), weight, valid = _rows(weight, logp_w, logp_l, ref_w, ref_l, anchor_w, anchor_l,
                               1.0 if prob_w is None else prob_w)
    a = eta * tau
    h = (logp_w - logp_l) - a * _sg(ref_w - ref_l) - (1.0 - a) * _sg(anchor_w - anchor_l)
    p = _sg(p)
    per_row = p * jnp.square(h - 0.5 * eta) + (1.0 - p) * jnp.square(h + 0.5 * eta)
    return _reduce(per_row, weight, valid)


def dno_target(win_a, win_b):
    """DNO's soft label for a pair: sigmoid(r_t(a) - r_t(b)), with r_t(y) = P(y > pi_t)."""
    return jax.nn.sigmoid(jnp.asarray(win_a) - jnp.asarray(win_b))


def dno_loss(logp_a, logp_b, anchor_a, anchor_b, target, *, eta, weight=None):
    """DNO's soft-label logistic regression of the policy's log-ratio gap on win-rate gaps.

    Rosset et al. 2024, "Direct Nash Optimization: Teaching Language Models to Self-Improve with
    General Preferences", Algorithm 1. With z = (log pi(a) - log pi_t(a)) - (log pi(b) -
    log pi_t(b)) and target = dno_target(r_t(a), r_t(b)) = sigmoid(r_t(a) - r_t(b)),

        loss = -[target log sigmoid(eta z) + (1 - target) log sigmoid(-eta z)].

    Pointwise it is minimised at eta z = r_t(a) - r_t(b), so over pairs from pi_t x pi_t the
    minimiser is pi_{t+1} ∝ pi_t exp(r_t / eta). Eta convention: this eta is the paper's
    eta_dno, the inverse of a step size; games.iterate('dno', eta=1 / eta_dno) is the same
    update (pass the reciprocal there).

    Args:
      logp_a, logp_b: [B] log pi of the two responses.
      anchor_a, anchor_b: [B] log pi_t of the same.
      target: [B] soft labels in [0, 1] (see dno_target).
      eta: the paper's eta (> 0).
      weight: None, or [B] row weights (0 for padding).

    Returns:
      (loss_sum, count) with count = sum of weights.
    """
    _check_positive('dno_loss', eta=eta)
    (logp_a, logp_b, anchor_a, anchor_b,
     target), weight, valid = _rows(weight, logp_a, logp_b, anchor_a, anchor_b, target)
    target = _sg(target)
    z = eta * ((logp_a - logp_b) - _sg(anchor_a - anchor_b))
    per_row = -(target * jax.nn.log_sigmoid(z) + (1.0 - target) * jax.nn.log_sigmoid(-z))
    return _reduce(per_row, weight, valid)


def sppo_log_partition(win_rates_group, *, eta):
    """Estimate of SPPO's log-normaliser log Z = log E_{y ~ pi_t} exp(eta P(y > pi_t)) per group.

    From the k samples of a group (drawn from pi_t) and their win rates w_i:
    log Z_hat = log((1/k) sum_i exp(eta w_i)). Consistent as k grows (the mean converges, and
    so do the win rates when they are group estimates), but biased for finite k: Jensen's
    inequality makes the log of a sample mean low in expectation, while noise in w_i pushes the
    mean of exp(eta w_i) high.

    Args:
      win_rates_group: [G, k] win rates of each group's samples (e.g. group_win_rates).
      eta: SPPO's step size.

    Returns:
      [G] estimates; repeat each k times to get the [B] log_partition of sppo_loss.
    """
    w = jnp.asarray(win_rates_group)
    k = w.shape[-1]
    return jax.nn.logsumexp(eta * w, axis=-1) - jnp.log(jnp.asarray(k, w.dtype))


def sppo_loss(logp, anchor_logp, win_rate, *, eta, log_partition=None, weight=None):
    """SPPO's squared regression of log pi/pi_t on the scaled win rate.

    Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment". The target
    is pi_{t+1}(y) = pi_t(y) exp(eta P(y > pi_t)) / Z with Z = E_{pi_t} exp(eta P(y > pi_t)),
    the multiplicative-weights step (games.iterate('sppo')). The paper replaces log Z by eta/2:

        loss = (log pi(y) - log pi_t(y) - eta (P(y > pi_t) - 1/2))^2;

    with log_partition given, the exact normaliser is used instead:

        loss = (log pi(y) - log pi_t(y) - (eta P(y > pi_t) - log Z))^2.

    Over y ~ pi_t the exact form is minimised (at zero) by pi_{t+1}; the practical form's
    target is not normalised, so its minimiser is only close to pi_{t+1}.

    Args:
      logp: [B] log pi(y).
      anchor_logp: [B] log pi_t(y).
      win_rate: [B] estimates of P(y > pi_t) (e.g. group_win_rates, flattened).
      eta: step size.
      log_partition: None (use eta/2), or [B] log Z of each row's prompt (sppo_log_partition).
      weight: None, or [B] row weights (0 for padding).

    Returns:
      (loss_sum, count) with count = sum of weights.
    """
    arrays = [logp, anchor_logp, win_rate]
    if log_partition is not None:
        arrays.append(log_partition)
    arrays, weight, valid = _rows(weight, *arrays)
    logp, anchor_logp, win_rate = arrays[:3]
    log_z = 0.5 * eta if log_partition is None else _sg(arrays[3])
    target = eta * _sg(win_rate) - log_z
    per_row = jnp.square(logp - _sg(anchor_logp) - target)
    return _reduce(per_row, weight, valid)


def online_ipo_loss(logr_a, logr_b, prob_a, *, tau, weight=None):
    """IPO on fresh pairs labelled by a preference model, in expectation over the label.

    Calandriello et al. 2024, "Human Alignment of Large Language Models through Online
    Preference Optimisation". With h = logr(a) - logr(b), logr = log pi/mu, and p = prob_a the
    probability that a wins (p in {0, 1} for hard labels):

        loss = p (h - 1/(2 tau))^2 + (1 - p) (h + 1/(2 tau))^2,

    the IPO loss (Azar et al. 2023) of the labelled pair averaged over its label. Over pairs
    from pi_t x pi_t labelled by P, its minimiser is the regularised best response
    pi ∝ mu exp(P(. > pi_t) / tau); so online IPO's fixed point pi = pi_t is the regularised
    Nash equilibrium (games.regularized_nash).

    Args:
      logr_a, logr_b: [B] log pi - log mu of the two responses.
      prob_a: [B] probability that the first response wins.
      tau: KL coefficient (> 0).
      weight: None, or [B] row weights (0 for padding).

    Returns:
      (loss_sum, count) with count = sum of weights.
    """
    _check_positive('online_ipo_loss', tau=tau)
    (logr_a, logr_b, prob_a), weight, valid = _rows(weight, logr_a, logr_b, prob_a)
    p = _sg(prob_a)
    h = logr_a - logr_b
    margin = 0.5 / tau
    per_row = p * jnp.square(h - margin) + (1.0 - p) * jnp.square(h + margin)
    return _reduce(per_row, weight, valid)
