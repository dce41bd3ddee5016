"""Policy-gradient objectives: KL estimators, per-token rewards, clipped policy and value losses.

Notation (DESIGN.md, "Objectives"): pi is the policy being trained, pi_old the policy that sampled
the batch, mu the frozen reference; logp, old_logp and ref_logp are their [B, T] log-probs of the
sampled response tokens, and mask is 1 on valid (right-padded) response tokens. Losses return
(sum, weight) so that gradient accumulation over microbatches divides once: the objective
minimised is sum_over_microbatches(sum) / sum_over_microbatches(weight); metrics are dicts of
name -> (sum, weight) in the same convention, and carry no gradient.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

KL_KINDS = ('k1', 'k2', 'k3')
AGGREGATE_MODES = ('token_mean', 'sequence_mean', 'sequence_sum', 'constant_length')


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _masked_log_ratio(logp, other_logp, mask):
    """logp - other_logp on valid tokens, 0 on padding (so padding cannot overflow an exp)."""
    return jnp.where(mask > 0, _f32(logp) - _f32(other_logp), 0.0)


def kl_estimate(logp, ref_logp, *, kind: str):
    """Per-token estimate of KL(pi || mu) from a token sampled from pi.

    Schulman 2020, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html). With
    log r = log mu(y_t) - log pi(y_t) = ref_logp - logp:

        k1 = -log r = logp - ref_logp                     unbiased, can be negative
        k2 = (log r)^2 / 2                                biased, >= 0, low variance
        k3 = (r - 1) - log r                              unbiased, >= 0, low variance

    Args:
      logp: log pi of the sampled tokens, any shape.
      ref_logp: log mu of the same tokens, same shape.
      kind: 'k1', 'k2' or 'k3'.

    Raises:
      ValueError: on an unknown kind.
    """
    if kind not in KL_KINDS:
        raise ValueError(f'kl_estimate: unknown kind {kind!r}; known: {KL_KINDS}')
    log_ratio = _f32(logp) - _f32(ref_logp)  # -log r
    if kind == 'k1':
        return log_ratio
    if kind == 'k2':
        return 0.5 * jnp.square(log_ratio)
    return jnp.expm1(-log_ratio) + log_ratio


def token_rewards(scores, kl, mask, *, kl_coef):
    """Per-token rewards [B, T]: -kl_coef * KL_t, plus the sequence score on the last valid token.

    Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"; Stiennon et al.
    2020, "Learning to Summarize from Human Feedback":

        r_t = -kl_coef * kl_t + [t == last valid token] * score

    Rows with no valid token get no reward at all; padding gets 0.

    Args:
      scores: [B] sequence rewards (e.g. a reward model's score).
      kl: [B, T] per-token KL estimates (see kl_estimate).
      mask: [B, T] 1 on valid response tokens.
      kl_coef: the KL coefficient beta (a float or a traced scalar).
    """
    mask = _f32(mask)
    length = mask.shape[1]
    valid = mask > 0
    # Index of the last valid token: the first valid one counted from the end.
    last = length - 1 - jnp.argmax(valid[:, ::-1], axis=1)
    has_token = jnp.any(valid, axis=1)
    at_last = jax.nn.one_hot(last, length, dtype=jnp.float32) * has_token[:, None]
    return -kl_coef * _f32(kl) * mask + _f32(scores)[:, None] * at_last


def missing_eos_penalty(scores, has_eos, *, penalty):
    """Subtract penalty from the score of each response that never emitted EOS (TRL convention).

    Args:
      scores: [B] sequence rewards.
      has_eos: [B] bool, True where the response ended with EOS.
      penalty: the (positive) amount subtracted from truncated responses.
    """
    scores = _f32(scores)
    return jnp.where(jnp.asarray(has_eos, bool), scores, scores - penalty)


def overlong_penalty(scores, lengths, *, max_len: int, buffer: int, penalty: float = 1.0):
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13): with L the response length,
    L_max the generation limit and B the buffer,

        R_len = 0                          for L <= L_max - B
              = ((L_max - B) - L) / B      for L_max - B < L <= L_max   (a ramp from 0 to -1)
              = -1                         for L > L_max,

    added to the score times `penalty`. A response the sampler cut at L_max gets the full -1.

    Args:
      scores: [B] rewards.
      lengths: [B] response lengths in tokens (EOS included).
      max_len: L_max (rl.max_new_tokens).
      buffer: B, the ramp's width in tokens (0 < B <= L_max).
      penalty: its scale.
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f'overlong_penalty: buffer must lie in (0, {max_len}], got {buffer}')
    start = max_len - buffer
    excess = jnp.clip((_f32(lengths) - start) / buffer, 0.0, 1.0)
    excess = jnp.where(_f32(lengths) > max_len, 1.0, excess)
    return _f32(scores) - penalty * excess


def aggregate(per_token, mask, *, mode: str):
    """Reduce [B, T] per-token values to (sum, weight); the quantity meant is sum / weight.

    - 'token_mean': (sum of valid values, number of valid tokens): every token weighs the same
      (PPO in TRL, DAPO's token-level loss).
    - 'sequence_mean': (sum over rows of the row's mean over its valid tokens, number of rows
      with at least one valid token): every sequence weighs the same (GRPO as published).
    - 'sequence_sum': (sum of valid values, number of rows with at least one valid token): the
      REINFORCE convention of summing log-probs over a sequence, with no length normalisation
      (as in Dr. GRPO, up to its constant divisor).
    - 'constant_length': (sum of valid values, rows with a valid token times T, the padded
      response length): Dr. GRPO's length-unbiased aggregation exactly (Liu et al. 2025,
      "Understanding R1-Zero-Like Training"), every token weighted 1 / (G * T) whatever its
      response's length, so long wrong answers are not penalised less per token than short ones.

    Rows with no valid token (batch padding) contribute to neither the sum nor the weight, so
    padding a microbatch with empty rows changes nothing.

    Raises:
      ValueError: on an unknown mode.
    """
    if mode not in AGGREGATE_MODES:
        raise ValueError(f'aggregate: unknown mode {mode!r}; known: {AGGREGATE_MODES}')
    mask = _f32(mask)
    masked = jnp.where(mask > 0, _f32(per_token), 0.0) * mask
    row_tokens = jnp.sum(mask, axis=1)
    rows = jnp.sum((row_tokens > 0).astype(jnp.float32))
    if mode == 'token_mean':
        return jnp.sum(masked), jnp.sum(mask)
    if mode == 'sequence_sum':
        return jnp.sum(masked), rows
    if mode == 'constant_length':
        return jnp.sum(masked), rows * mask.shape[1]
    row_means = jnp.sum(masked, axis=1) / jnp.maximum(row_tokens, 1.0)
    return jnp.sum(row_means), rows


def _token_metric(value, mask):
    """(sum over valid tokens, number of valid tokens), with no gradient."""
    value = jax.lax.stop_gradient(_f32(value))
    return jnp.sum(value * mask), jnp.sum(mask)


def policy_loss(logp, old_logp, advantages, mask, *, clip_low: float = 0.2,
                clip_high: float | None = None, dual_clip: float | None = None,
                mode: str = 'token_mean', level: str = 'token'):
    """PPO clipped-ratio policy loss, with asymmetric ("clip-higher") and dual clipping, per
    token or (GSPO) per sequence.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms". Per token, with
    r = pi(y_t) / pi_old(y_t) = exp(logp - old_logp) and advantage A:

        l = max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))

    clip_high defaults to clip_low; a larger one is DAPO's clip-higher (Yu et al. 2025, "DAPO: An
    Open-Source LLM Reinforcement Learning System at Scale"). Dual clip (Ye et al. 2020,
    "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning") bounds the loss of
    negative-advantage tokens whose ratio has grown large, with dual_clip = c > 1:

        l = min(l, -c * A)   where A < 0

    level='sequence' is GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): every
    token of response i takes the sequence's length-normalised ratio

        s_i = exp((1 / |y_i|) sum_t (logp_t - old_logp_t)),   r_{i,t} = sg(s_i) * pi_t / sg(pi_t),

    whose value is s_i at every token and whose gradient is s_i * grad log pi_t (GSPO-token's
    form; with a sequence advantage and 'sequence_mean' it is GSPO's gradient exactly). Clipping
    then acts on s_i: a whole response is in or out of the trust region (the paper's ranges are
    small: clip_low 3e-4, clip_high 4e-4).

    At r = 1 (logp == old_logp) the 'token_mean' loss is minus the mean advantage over valid
    tokens and its gradient w.r.t. logp is -A / n: the REINFORCE gradient.

    Args:
      logp: [B, T] log pi of the sampled tokens (differentiated).
      old_logp: [B, T] log pi_old of the same tokens (treated as constants).
      advantages: [B, T] per-token advantages (constants; use sequence_to_tokens for [B] ones).
      mask: [B, T] 1 on valid response tokens.
      clip_low: the ratio is clipped below at 1 - clip_low.
      clip_high: the ratio is clipped above at 1 + clip_high (default: clip_low).
      dual_clip: None, or c > 1 for dual clipping.
      mode: the reduction, see aggregate.
      level: 'token' (PPO's per-token ratio) or 'sequence' (GSPO's).

    Returns:
      (loss_sum, weight, metrics); metrics are (sum, number of valid tokens) of:
      'clip_fraction' (tokens where the clipped term is the one selected, -A * clip(r) > -A * r),
      'approx_kl' (k3 estimate of KL(pi_old || pi) from tokens sampled from pi_old:
      r - 1 - log r), 'ratio' (r), and with dual_clip 'dual_clip_fraction' (tokens where the
      dual bound -c * A is the one selected).

    Raises:
      ValueError: on dual_clip <= 1, an unknown mode or level.
    """
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f'policy_loss: dual_clip must be > 1, got {dual_clip}')
    if level not in ('token', 'sequence'):
        raise ValueError(f"policy_loss: level must be 'token' or 'sequence', got {level!r}")
    if clip_high is None:
        clip_high = clip_low
    mask = _f32(mask)
    advantages = jax.lax.stop_gradient(_f32(advantages))
    log_ratio = _masked_log_ratio(logp, jax.lax.stop_gradient(_f32(old_logp)), mask)
    if level == 'sequence':  # sg(s_i) * exp(logp - sg(logp)): value s_i, gradient s_i dlogp
        seq = jnp.sum(log_ratio, axis=1, keepdims=True) / jnp.maximum(
            jnp.sum(mask, axis=1, keepdims=True), 1.0)
        own = _f32(logp)
        log_ratio = (jax.lax.stop_gradient(seq) + own - jax.lax.stop_gradient(own)) * mask
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    is_clipped = clipped > unclipped
    per_token = jnp.where(is_clipped, clipped, unclipped)
    metrics = {
        'clip_fraction': _token_metric(is_clipped, mask),
        'approx_kl': _token_metric(jnp.expm1(log_ratio) - log_ratio, mask),
        'ratio': _token_metric(ratio, mask),
    }
    if dual_clip is not None:
        bound = -dual_clip * advantages
        is_dual = (advantages < 0) & (bound < per_token)
        per_token = jnp.where(is_dual, bound, per_token)
        metrics['dual_clip_fraction'] = _token_metric(is_dual, mask)
    loss_sum, weight = aggregate(per_token, mask, mode=mode)
    return loss_sum, weight, metrics


def value_loss(values, old_values, returns, mask, *, clip: float | None = 0.2,
               mode: str = 'token_mean'):
    """Clipped value loss of PPO's critic.

    Per token, with V the new values, V_old those at sampling time and R the returns:

        l = 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -clip, clip) - R)^2)

    as in OpenAI baselines' ppo2 and TRL; clip=None gives the plain 0.5 * (V - R)^2.

    Args:
      values: [B, T] value predictions (differentiated).
      old_values: [B, T] value predictions at sampling time (constants).
      returns: [B, T] regression targets, e.g. GAE returns (constants).
      mask: [B, T] 1 on valid response tokens.
      clip: the clip range, or None.
      mode: the reduction, see aggregate.

    Returns:
      (loss_sum, weight, metrics); metrics['value_clip_fraction'] is (number of valid tokens where
      the clipped term is the larger one, number of valid tokens).
    """
    mask = _f32(mask)
    values = _f32(values)
    old_values = jax.lax.stop_gradient(_f32(old_values))
    returns = jax.lax.stop_gradient(_f32(returns))
    unclipped = jnp.square(values - returns)
    if clip is None:
        per_token = 0.5 * unclipped
        is_clipped = jnp.zeros_like(unclipped, bool)
    else:
        clipped_values = old_values + jnp.clip(values - old_values, -clip, clip)
        clipped = jnp.square(clipped_values - returns)
        is_clipped = clipped > unclipped
        per_token = 0.5 * jnp.where(is_clipped, clipped, unclipped)
    loss_sum, weight = aggregate(per_token, mask, mode=mode)
    return loss_sum, weight, {'value_clip_fraction': _token_metric(is_clipped, mask)}


def kl_penalty_loss(logp, ref_logp, mask, *, kind: str = 'k3', mode: str = 'token_mean'):
    """The KL to the reference as a loss term, differentiable in logp (GRPO's k3 term).

    Shao et al. 2024, "DeepSeekMath" (Eq. 4): loss = aggregate(kl_estimate(logp, ref_logp)).
    Multiply by the KL coefficient beta outside. Padding tokens contribute neither value nor
    gradient.

    Returns:
      (sum, weight) as in aggregate.
    """
    mask = _f32(mask)
    ref_logp = jax.lax.stop_gradient(_f32(ref_logp))
    logp = jnp.where(mask > 0, _f32(logp), ref_logp)  # padding: log ratio 0, estimate 0
    return aggregate(kl_estimate(logp, ref_logp, kind=kind), mask, mode=mode)


def adaptive_kl_coef(coef, observed_kl, *, target, horizon, batch_size):
    """One step of the adaptive KL controller of Ziegler et al. 2019.

    "Fine-Tuning Language Models from Human Preferences", Sec. 2.2:

        error = clip(observed_kl / target - 1, -0.2, 0.2)
        coef  = coef * (1 + error * batch_size / horizon)

    Python numbers in give a Python float out (a host-side controller); otherwise jnp arrays (for
    use inside jit).

    Raises:
      ValueError: if target or horizon is a number <= 0.
    """
    for name, value in (('target', target), ('horizon', horizon)):
        if isinstance(value, numbers.Real) and not value > 0:
            raise ValueError(f'adaptive_kl_coef: {name} must be > 0, got {value}')
    if all(isinstance(v, numbers.Real) for v in (coef, observed_kl, target, horizon, batch_size)):
        error = min(max(float(observed_kl) / float(target) - 1.0, -0.2), 0.2)
        return float(coef) * (1.0 + error * float(batch_size) / float(horizon))
    error = jnp.clip(_f32(observed_kl) / target - 1.0, -0.2, 0.2)
    return _f32(coef) * (1.0 + error * batch_size / horizon)
