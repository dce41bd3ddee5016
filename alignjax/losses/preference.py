"""Preference objectives: the pairwise preference-model loss and the DPO family.

Notation (DESIGN.md, "Objectives"): for a pair (x, y_w, y_l) of chosen and rejected responses,
pi_c = log pi(y_w | x) and pi_r = log pi(y_l | x) are per-sequence log-prob sums over response
tokens (or per-token averages when the caller length-normalises), ref_c and ref_r the same under
the frozen reference mu, and the implicit rewards are beta * (pi_c - ref_c) and beta * (pi_r - ref_r):

    h = beta * ((pi_c - ref_c) - (pi_r - ref_r)).

Reference-free variants (reference-free DPO, ORPO-like setups, SimPO) are had by passing zeros as
the reference log-probs. Losses are returned as (sum, count) so that gradient accumulation over
microbatches divides once, by the global number of pairs.

Most rows are per-example. Three are batch-level (`PairLoss.batch_level`): 'aot' and 'aot_unpaired'
sort across the batch, 'sft' averages over its tokens. Their [B] terms are per rank or per share
of the batch, meaningful only summed over the real pairs; padding is handled through the mask. Under
gradient accumulation they see one microbatch at a time (TRL's too: per device and microbatch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(value):
    """The Python float of a coefficient, or None when it is traced (checked by the caller then)."""
    try:
        return float(np.asarray(value))
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _validate(loss_type: str, beta, label_smoothing, discopop_tau=None) -> None:
    if loss_type not in PAIR_LOSSES:
        raise ValueError(f'unknown preference loss type {loss_type!r}; known: {LOSS_TYPES}')
    b = _concrete(beta)
    if b is not None and not b > 0:
        raise ValueError(f'loss.beta must be > 0, got {beta}')
    e = _concrete(label_smoothing)
    row = PAIR_LOSSES[loss_type]
    if e is not None and not row.smoothing_ok(e):
        raise ValueError(f'loss.label_smoothing must lie in {row.smoothing} for {loss_type!r}'
                         f'{row.smoothing_note}, got {e}')
    tau = _concrete(discopop_tau) if 'tau' in row.coefficients else None
    if tau is not None and not tau > 0:
        raise ValueError(f'loss.discopop_tau must be > 0, got {discopop_tau}')


def _mask(mask, shape, dtype):
    if mask is None:
        return jnp.ones(shape, dtype)
    return jnp.broadcast_to(jnp.asarray(mask, dtype), shape)


def preference_model_loss(logit_cr, logit_rc, *, mask=None):
    """Logistic loss of a pairwise preference model, each pair shown in both orders.

    The model g(x, y, y') scores "y is preferred to y'" (the PairRM / general preference model of
    Jiang et al. 2023 and Munos et al. 2023, "Nash Learning from Human Feedback"). Each labelled pair
    gives two ordered examples, (chosen, rejected) with label 1 and (rejected, chosen) with label 0:

        loss = -log sigmoid(logit(c, r)) - log sigmoid(-logit(r, c))

    Training on both orders teaches the model the antisymmetry P(y > y') = 1 - P(y' > y).

    Args:
      logit_cr: [B] logits of (prompt, chosen, rejected).
      logit_rc: [B] logits of (prompt, rejected, chosen).
      mask: None, or [B] 1 for real pairs, 0 for padding.

    Returns:
      (loss_sum, count) with count = 2 * B (two ordered examples per unmasked pair).
    """
    logit_cr = jnp.asarray(logit_cr)
    logit_rc = jnp.asarray(logit_rc)
    per_pair = -jax.nn.log_sigmoid(logit_cr) - jax.nn.log_sigmoid(-logit_rc)
    weights = _mask(mask, per_pair.shape, per_pair.dtype)
    return jnp.sum(per_pair * weights), 2.0 * jnp.sum(weights)


def _smoothed_logistic(z, e):
    """-(1 - e) log sigmoid(z) - e log sigmoid(-z): logistic loss on a label flipped with prob. e."""
    return -(1.0 - e) * jax.nn.log_sigmoid(z) - e * jax.nn.log_sigmoid(-z)


class Pair(NamedTuple):
    """What a DPO-family loss reads of a batch of pairs, each [B]: the policy's log-probs of the
    chosen and rejected responses and their log-ratios to the reference (sums, or per-token
    averages when the caller length-normalises), and what single rows read besides."""
    logps_c: jax.Array
    logps_r: jax.Array
    ratio_c: jax.Array  # pi_c - ref_c
    ratio_r: jax.Array  # pi_r - ref_r
    valid: jax.Array | None = None  # bool, the real pairs (None: all); read by batch-level rows
    nll_c: jax.Array | None = None  # mean token NLL of each chosen response ('sft')
    tokens_c: jax.Array | None = None  # its token count ('sft'; None: every pair weighs one)
    reward_shift: jax.Array | float = 0.0  # BCO's delta, a scalar ('bco_pair')

    @property
    def margin(self) -> jax.Array:
        return self.ratio_c - self.ratio_r


# The DPO family, one pure function a loss: (pair, beta, e = label_smoothing, gamma) -> [B].
# With m = pair.margin, h = beta * m, r_c = beta * ratio_c, r_r = beta * ratio_r.


def sigmoid_loss(t: Pair, beta, e, gamma):
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization"); with e > 0 the conservative
    DPO (cDPO, Mitchell 2023) of a label flipped with probability e:
    -(1 - e) log sigmoid(h) - e log sigmoid(-h). Reference-free DPO: zeros as the reference."""
    del gamma
    return _smoothed_logistic(beta * t.margin, e)


def robust_loss(t: Pair, beta, e, gamma):
    """rDPO (Chowdhury et al. 2024, "Provably Robust DPO"), unbiased under label noise e:
    (-(1 - e) log sigmoid(h) + e log sigmoid(-h)) / (1 - 2e), 0 <= e < 0.5."""
    del gamma
    h = beta * t.margin
    return (-(1.0 - e) * jax.nn.log_sigmoid(h) + e * jax.nn.log_sigmoid(-h)) / (1.0 - 2.0 * e)


def ipo_loss(t: Pair, beta, e, gamma):
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", Eq. 17, beta = tau): (m - 1 / (2 beta))^2. Azar et al. average log-probs over
    tokens: pass averages for that convention (TRL does so inside its loss)."""
    del e, gamma
    return jnp.square(t.margin - 1.0 / (2.0 * beta))


def hinge_loss(t: Pair, beta, e, gamma):
    """SLiC-HF (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human
    Feedback"), with the reference log-ratio: max(0, 1 - h)."""
    del e, gamma
    return jax.nn.relu(1.0 - beta * t.margin)


def simpo_loss(t: Pair, beta, e, gamma):
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward"), margin gamma, label smoothing e, on length-averaged log-probs, no reference:
    z = beta * (pi_c - pi_r) - gamma;  -(1 - e) log sigmoid(z) - e log sigmoid(-z)."""
    return _smoothed_logistic(beta * (t.logps_c - t.logps_r) - gamma, e)


def exo_pair_loss(t: Pair, beta, e, gamma):
    """EXO (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment",
    Eq. 16 for K = 2): KL(p_theta || p_e) between p_theta = (sigmoid(h), sigmoid(-h)) and the
    smoothed label (1 - e, e), 0 < e <= 0.5."""
    del gamma
    h = beta * t.margin
    log_q_w, log_q_l = jax.nn.log_sigmoid(h), jax.nn.log_sigmoid(-h)
    return (jnp.exp(log_q_w) * (log_q_w - jnp.log1p(-e)) + jnp.exp(log_q_l) *
            (log_q_l - jnp.log(e)))


def nca_pair_loss(t: Pair, beta, e, gamma):
    """NCA (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit
    Rewards"), pairwise form:
    -log sigmoid(r_c) - 0.5 log sigmoid(-r_c) - 0.5 log sigmoid(-r_r)."""
    del e, gamma
    r_c, r_r = beta * t.ratio_c, beta * t.ratio_r
    return (-jax.nn.log_sigmoid(r_c) - 0.5 * jax.nn.log_sigmoid(-r_c)
            - 0.5 * jax.nn.log_sigmoid(-r_r))


def sppo_hard_loss(t: Pair, beta, e, gamma):
    """SPPO (Wu et al. 2024, "Self-Play Preference Optimization") with hard win probabilities
    P(y_w > y_l) = 1, eta = 1 / beta:
    (pi_c - ref_c - 1 / (2 beta))^2 + (pi_r - ref_r + 1 / (2 beta))^2."""
    del e, gamma
    half_eta = 1.0 / (2.0 * beta)
    return jnp.square(t.ratio_c - half_eta) + jnp.square(t.ratio_r + half_eta)


def apo_zero_loss(t: Pair, beta, e, gamma):
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization", Eq. 7), shifted by
    the constant 1 to be non-negative (gradients unchanged): sigmoid(-r_c) + sigmoid(r_r)."""
    del e, gamma
    return jax.nn.sigmoid(-beta * t.ratio_c) + jax.nn.sigmoid(beta * t.ratio_r)


def apo_down_loss(t: Pair, beta, e, gamma):
    """APO-down (same paper, Eq. 8), shifted by 1: sigmoid(r_c) + sigmoid(-h)."""
    del e, gamma
    return jax.nn.sigmoid(beta * t.ratio_c) + jax.nn.sigmoid(-beta * t.margin)


def bco_pair_loss(t: Pair, beta, e, gamma):
    """BCO (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
    Alignment"), paired form: a logistic classifier whose logit is the implicit reward shifted by
    delta, labelled 1 on the chosen and 0 on the rejected response:

        -log sigmoid(r_c - delta) - log sigmoid(-(r_r - delta)).

    The paper bounds DPO's loss from above by this cross-entropy and narrows the gap with delta,
    a running mean of the implicit rewards, held constant for the gradient. A pure loss keeps no
    history, so delta is an input (`t.reward_shift`, `dpo_loss(bco_delta=...)`; no gradient flows
    into it). Zero is TRL 1.16's 'bco_pair', which keeps no mean; the DPO trainer carries the
    paper's mean across steps (`bco_running_shift`)."""
    del e, gamma
    delta = jax.lax.stop_gradient(t.reward_shift)
    return (-jax.nn.log_sigmoid(beta * t.ratio_c - delta)
            - jax.nn.log_sigmoid(delta - beta * t.ratio_r))


def bco_running_shift(delta: float, batches: int, rewards_mean: float) -> tuple[float, int]:
    """BCO's delta after one more batch: the running mean, over the batches seen, of each
    batch's mean implicit reward (rewards_mean = (mean r_c + mean r_r) / 2). Returns (delta,
    batches + 1); start from (0, 0).

    The DPO trainer applies it on host after each step, so step s trains on the mean of the
    batches before it (delta = 0 at step 0): one constant for the whole step keeps gradient
    accumulation exact and is checkpointed with the run. TRL before 1.0 folded the current batch
    in first; the two differ by one batch's weight in the mean.
    """
    batches = int(batches) + 1
    return float(delta) + (float(rewards_mean) - float(delta)) / batches, batches


def _ranked(a, b, valid):
    """a and b each sorted ascending over the real pairs (padding placed last), and which ranks
    are real (None when every pair is)."""
    if valid is None:
        return jnp.sort(a), jnp.sort(b), None
    last = lambda x: jnp.where(valid, x, jnp.inf)
    real = jnp.arange(a.shape[0]) < jnp.sum(valid)
    return jnp.sort(last(a)), jnp.sort(last(b)), real


def _sorted_logistic(a, b, valid, beta, e):
    """Smoothed logistic loss of beta * (a_(k) - b_(k)), the k-th smallest of each, rank by rank.
    With padding, rank k's term lies on the k-th real row and padding rows hold 0, so the
    caller's masked sum is the sum over the real ranks (padding's inf never reaches a gradient)."""
    sa, sb, real = _ranked(a, b, valid)
    if real is None:
        return _smoothed_logistic(beta * (sa - sb), e)
    per_rank = jnp.where(real, _smoothed_logistic(beta * jnp.where(real, sa - sb, 0.0), e), 0.0)
    rows = jnp.argsort(~valid, stable=True)  # the real rows first, in order
    return jnp.zeros_like(per_rank).at[rows].set(per_rank)


def aot_loss(t: Pair, beta, e, gamma):
    """AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal
    Transport"): the policy's chosen-over-rejected log-ratio u = pi_c - pi_r should dominate the
    reference's v = ref_c - ref_r in distribution (first-order stochastic dominance), relaxed to
    one-dimensional optimal transport: sort both across the batch and compare quantiles,

        loss_k = -(1 - e) log sigmoid(beta * (u_(k) - v_(k))) - e log sigmoid(-beta * (...)),

    u_(k) the k-th smallest. Batch-level: the [B] terms are per rank (on the real rows; padding
    excluded through the mask). Under gradient accumulation the sort is per microbatch; sharded
    over devices it is over the global (micro)batch."""
    del gamma
    u = t.logps_c - t.logps_r
    return _sorted_logistic(u, u - t.margin, t.valid, beta, e)


def aot_unpaired_loss(t: Pair, beta, e, gamma):
    """AOT, unpaired (same paper): the chosen responses' log-ratios should dominate the rejected
    ones' in distribution, each side sorted across the batch on its own (pairing is not used):

        loss_k = -(1 - e) log sigmoid(beta * (c_(k) - l_(k))) - e log sigmoid(-beta * (...)),

    c = pi_c - ref_c, l = pi_r - ref_r. Batch-level, like 'aot'."""
    del gamma
    return _sorted_logistic(t.ratio_c, t.ratio_r, t.valid, beta, e)


DISCOPOP_TAU = 0.05  # the paper's temperature


def discopop_loss(t: Pair, beta, e, gamma, *, tau=DISCOPOP_TAU):
    """DiscoPOP (Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms with and
    for Large Language Models"), its log-ratio modulated loss: the logistic (DPO) and exponential
    losses of h mixed by a sigmoid of h at temperature tau,

        w = sigmoid(h / tau);  (1 - w) * -log sigmoid(h) + w * exp(-h),

    with w exp(-h) computed as exp(log sigmoid(h / tau) - h), finite at any margin for tau < 1."""
    del e, gamma
    h = beta * t.margin
    return (jax.nn.sigmoid(-h / tau) * jax.nn.softplus(-h)
            + jnp.exp(jax.nn.log_sigmoid(h / tau) - h))


def sft_loss(t: Pair, beta, e, gamma):
    """The NLL of the chosen responses as a loss type (TRL's 'sft'; RPO, Pang et al. 2024, is
    ['sigmoid', 'sft'] weighted [1, alpha]): the token mean over the batch,

        sum_i |y_w,i| nll_i / sum_j |y_w,j|,

    nll_i the mean token NLL of chosen response i (`t.nll_c`), |y_w,i| its tokens (`t.tokens_c`).
    Batch-level: pair i's term is n |y_w,i| nll_i / sum_j |y_w,j| over the n real pairs, so their
    mean is the token mean (per microbatch under gradient accumulation). Without token counts each
    pair weighs one: the mean of per-pair means, `rpo_alpha`'s term."""
    del beta, e, gamma
    if t.nll_c is None:
        raise ValueError("loss type 'sft' needs chosen_nll, the per-example mean token NLL of the "
                         'chosen response (and chosen_lengths for the token mean)')
    nll = jnp.asarray(t.nll_c)
    real = jnp.ones(nll.shape, bool) if t.valid is None else t.valid
    tokens = jnp.ones_like(nll) if t.tokens_c is None else jnp.asarray(t.tokens_c, nll.dtype)
    tokens = jnp.where(real, tokens, 0.0)
    total = jnp.sum(tokens)
    share = jnp.sum(real.astype(nll.dtype)) * tokens / jnp.where(total > 0, total, 1.0)
    return jnp.where(real, share * nll, 0.0)


def sigmoid_norm_loss(t: Pair, beta, e, gamma):
    """DPO on per-token average log-ratios (TRL's 'sigmoid_norm'; SimPO's length normalisation,
    Meng et al. 2024, with the reference kept):
    -(1 - e) log sigmoid(beta * ((pi_c - ref_c) / |y_w| - (pi_r - ref_r) / |y_l|)) - e log ....
    A length-normalised row: the caller passes averages (the DPO trainer divides)."""
    return sigmoid_loss(t, beta, e, gamma)


@dataclasses.dataclass(frozen=True)
class PairLoss:
    """One row of the DPO family: its pure loss and what the trainer must know about it."""
    fn: Callable[..., jax.Array]
    smoothing: str = '[0, 0.5]'  # label_smoothing's interval, for the check and its message
    smoothing_note: str = ''
    reference_free: bool = False  # reads no reference (the trainer runs none)
    length_normalized: bool = False  # defined on per-token average log-probs
    alone: bool = False  # combines with no other type
    batch_level: bool = False  # its terms depend on the whole (micro)batch: sorted or averaged
    token_level: bool = False  # reads chosen token NLLs, never the pair's log-probs
    coefficients: tuple[str, ...] = ()  # keyword-only coefficients of fn beyond (beta, e, gamma)

    def smoothing_ok(self, e: float) -> bool:
        lo, hi = (float(v) for v in self.smoothing[1:-1].split(','))
        return ((lo < e if self.smoothing[0] == '(' else lo <= e)
                and (e < hi if self.smoothing[-1] == ')' else e <= hi))


PAIR_LOSSES: dict[str, PairLoss] = {
    'sigmoid': PairLoss(sigmoid_loss),
    'ipo': PairLoss(ipo_loss),
    'hinge': PairLoss(hinge_loss),
    'simpo': PairLoss(simpo_loss, reference_free=True, length_normalized=True, alone=True),
    'robust': PairLoss(robust_loss, smoothing='[0, 0.5)'),
    'exo_pair': PairLoss(exo_pair_loss, smoothing='(0, 0.5]',
                         smoothing_note=' (the paper suggests 1e-3)'),
    'nca_pair': PairLoss(nca_pair_loss),
    'sppo_hard': PairLoss(sppo_hard_loss),
    'apo_zero': PairLoss(apo_zero_loss),
    'apo_down': PairLoss(apo_down_loss),
    'bco_pair': PairLoss(bco_pair_loss),
    'aot': PairLoss(aot_loss, batch_level=True),
    'aot_unpaired': PairLoss(aot_unpaired_loss, batch_level=True),
    'discopop': PairLoss(discopop_loss, coefficients=('tau',)),
    'sft': PairLoss(sft_loss, reference_free=True, batch_level=True, token_level=True),
    'sigmoid_norm': PairLoss(sigmoid_norm_loss, length_normalized=True),
}
LOSS_TYPES = tuple(PAIR_LOSSES)


def preference_losses(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                      loss_type: str, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0,
                      discopop_tau=DISCOPOP_TAU, bco_delta=0.0, chosen_nll=None,
                      chosen_lengths=None, mask=None):
    """Per-example losses [B] of one DPO-family objective, `PAIR_LOSSES[loss_type]` (each row's
    function gives its equation and paper).

    Inputs are [B] per-sequence log-prob sums (or per-token averages when the caller
    length-normalises: the function does not care; rows marked `length_normalized` are defined on
    averages); a reference-free row ignores the reference. The rest is read by single rows:
    discopop_tau ('discopop'), bco_delta ('bco_pair', a scalar), chosen_nll and chosen_lengths
    ('sft': [B] mean token NLL and token count of each chosen response), and mask ([B] 1 for real
    pairs, 0 for padding), which tells the batch-level rows which pairs to sort or average; the
    result itself is not masked.

    Raises ValueError on an unknown type, beta <= 0, a label_smoothing outside the type's range,
    discopop_tau <= 0, or 'sft' without chosen_nll.
    """
    _validate(loss_type, beta, label_smoothing, discopop_tau)
    pc, pr = jnp.asarray(chosen_logps), jnp.asarray(rejected_logps)
    valid = None if mask is None else jnp.broadcast_to(jnp.asarray(mask) > 0, pc.shape)
    pair = Pair(pc, pr, pc - jnp.asarray(ref_chosen_logps), pr - jnp.asarray(ref_rejected_logps),
                valid=valid, nll_c=chosen_nll, tokens_c=chosen_lengths, reward_shift=bco_delta)
    row = PAIR_LOSSES[loss_type]
    coefficients = {'tau': discopop_tau}
    return row.fn(pair, beta, label_smoothing, gamma,
                  **{name: coefficients[name] for name in row.coefficients})


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
             loss_types: Sequence[str] | str = ('sigmoid',), loss_weights=None, beta,
             label_smoothing=0.0, gamma=0.0, discopop_tau=DISCOPOP_TAU, bco_delta=0.0,
             rpo_alpha: float = 0.0, chosen_nll=None, chosen_lengths=None, mask=None):
    """DPO-family loss: a weighted list of objectives, plus an optional RPO NLL term.

    Per example:

        loss = sum_k w_k * preference_losses(..., loss_type=loss_types[k]) + rpo_alpha * chosen_nll

    The NLL term (RPO: Pang et al. 2024, "Iterative Reasoning Preference Optimization"; Liu et al.
    2024, "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial
    Regularizer") keeps the likelihood of the chosen response from falling.

    Args:
      chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps: [B] log-prob sums
        (or averages); zeros as the reference for reference-free DPO.
      loss_types: names from LOSS_TYPES (a single name is accepted too).
      loss_weights: one weight per type (default 1 each).
      beta, label_smoothing, gamma, discopop_tau, bco_delta: see preference_losses.
      rpo_alpha: weight of the NLL term; when > 0, chosen_nll is required.
      chosen_nll: [B] per-example mean token NLL of the chosen response (RPO's term, 'sft').
      chosen_lengths: [B] token counts of the chosen responses (the token mean of 'sft').
      mask: None, or [B] 1 for real pairs, 0 for padding (the batch-level types sort and average
        over the real pairs only).

    Returns:
      (loss_sum, count, metrics): count = B unmasked pairs; metrics maps name -> (sum, count) for
      rewards/chosen = beta * (pi_c - ref_c), rewards/rejected, rewards/margin (their difference),
      rewards/accuracy (1 where margin > 0, ties 0), logps/chosen, logps/rejected.
    """
    if isinstance(loss_types, str):
        loss_types = (loss_types,)
    loss_types = tuple(loss_types)
    if not loss_types:
        raise ValueError('loss.types: at least one preference loss type is required')
    if loss_weights is None:
        loss_weights = (1.0,) * len(loss_types)
    loss_weights = tuple(loss_weights)
    if len(loss_weights) != len(loss_types):
        raise ValueError(f'loss.weights: {len(loss_weights)} weights for {len(loss_types)} loss '
                         f'types {loss_types}')
    alpha = _concrete(rpo_alpha)
    if alpha is not None and alpha < 0:
        raise ValueError(f'loss.rpo_alpha must be >= 0, got {rpo_alpha}')
    use_nll = alpha is None or alpha > 0
    if use_nll and chosen_nll is None:
        raise ValueError('loss.rpo_alpha > 0 needs chosen_nll, the per-example mean token NLL of '
                         'the chosen response')

    chosen_logps = jnp.asarray(chosen_logps)
    rejected_logps = jnp.asarray(rejected_logps)
    per_example = 0.0
    for loss_type, weight in zip(loss_types, loss_weights):
        per_example = per_example + weight * preference_losses(
            chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, loss_type=loss_type,
            beta=beta, label_smoothing=label_smoothing, gamma=gamma, discopop_tau=discopop_tau,
            bco_delta=bco_delta, chosen_nll=chosen_nll, chosen_lengths=chosen_lengths, mask=mask)
    if use_nll:
        per_example = per_example + rpo_alpha * jnp.asarray(chosen_nll)

    weights = _mask(mask, per_example.shape, per_example.dtype)
    count = jnp.sum(weights)
    sg = jax.lax.stop_gradient
    chosen_rewards = beta * sg(chosen_logps - jnp.asarray(ref_chosen_logps))
    rejected_rewards = beta * sg(rejected_logps - jnp.asarray(ref_rejected_logps))
    reward_margin = chosen_rewards - rejected_rewards
    observed = {
        'rewards/chosen': chosen_rewards,
        'rewards/rejected': rejected_rewards,
        'rewards/margin': reward_margin,
        'rewards/accuracy': (reward_margin > 0).astype(weights.dtype),
        'logps/chosen': sg(chosen_logps),
        'logps/rejected': sg(rejected_logps),
    }
    metrics = {name: (jnp.sum(value * weights), count) for name, value in observed.items()}
    return jnp.sum(per_example * weights), count, metrics
