"""Online objectives (advantages, KL estimators, PPO/GRPO losses) against NumPy and closed forms.

Every reference below is an independent NumPy loop over rows and tokens, written from the papers'
equations rather than from the vectorised code under test. Masks have varied valid lengths,
including a full row and an all-padding row, and padding carries garbage values that must not
leak into any result.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.losses import advantages as adv_lib
from alignjax.losses import policy_gradient as pg

B, T = 6, 9
LENGTHS = (9, 5, 1, 0, 7, 3)  # a full row, a one-token row and an all-padding row
RTOL = 1e-5
ATOL = 1e-5


def make_mask(lengths=LENGTHS, t=T):
    return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


def randn(seed, shape=(B, T), scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def close(actual, expected, rtol=RTOL, atol=ATOL):
    actual = np.asarray(actual, np.float64)
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def ratio_of(pair):
    total, weight = pair
    return float(total) / float(weight)


# --- GAE ------------------------------------------------------------------------------------------


def np_gae(rewards, values, lengths, gamma, lam):
    """GAE by the definition A_t = sum_{l >= 0} (gamma lam)^l delta_{t+l}, row by row."""
    adv = np.zeros(rewards.shape)
    for b, n in enumerate(lengths):
        deltas = []
        for t in range(n):
            next_value = float(values[b, t + 1]) if t + 1 < n else 0.0
            deltas.append(float(rewards[b, t]) + gamma * next_value - float(values[b, t]))
        for t in range(n):
            adv[b, t] = sum((gamma * lam)**l * deltas[t + l] for l in range(n - t))
    returns = adv + values * make_mask(lengths, rewards.shape[1])
    return adv, returns


@pytest.mark.parametrize('gamma,lam', [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (0.7, 1.0)])
def test_gae_matches_numpy(gamma, lam):
    rewards, values, mask = randn(0), randn(1), make_mask()
    advantages, returns = adv_lib.gae(rewards, values, mask, gamma=gamma, lam=lam)
    assert advantages.shape == returns.shape == (B, T)
    assert advantages.dtype == returns.dtype == jnp.float32
    ref_adv, ref_ret = np_gae(rewards, values, LENGTHS, gamma, lam)
    close(advantages, ref_adv)
    close(returns, ref_ret)


def test_gae_lambda_one_zero_values_is_discounted_return():
    rewards, mask, gamma = randn(2), make_mask(), 0.9
    advantages, returns = adv_lib.gae(rewards, np.zeros((B, T), np.float32), mask, gamma=gamma,
                                      lam=1.0)
    expected = np.zeros((B, T))
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            expected[b, t] = sum(gamma**(k - t) * rewards[b, k] for k in range(t, n))
    close(advantages, expected)
    close(returns, expected)


def test_gae_zero_on_padding_and_invariant_to_extra_padding():
    rewards, values, mask = randn(3), randn(4), make_mask()
    advantages, returns = adv_lib.gae(rewards, values, mask, gamma=0.95, lam=0.9)
    assert np.all(np.asarray(advantages)[mask == 0] == 0.0)
    assert np.all(np.asarray(returns)[mask == 0] == 0.0)
    # Four more columns of garbage padding, and garbage on the existing padding.
    pad = 4
    rewards_p = np.concatenate([rewards, randn(5, (B, pad), 100.0)], axis=1)
    values_p = np.concatenate([values, randn(6, (B, pad), 100.0)], axis=1)
    rewards_p[:, :T][mask == 0] = 50.0
    values_p[:, :T][mask == 0] = -50.0
    mask_p = make_mask(LENGTHS, T + pad)
    adv_p, ret_p = adv_lib.gae(rewards_p, values_p, mask_p, gamma=0.95, lam=0.9)
    close(np.asarray(adv_p)[:, :T], advantages)
    close(np.asarray(ret_p)[:, :T], returns)
    assert np.all(np.asarray(adv_p)[:, T:] == 0.0)


# --- sequence-level advantages --------------------------------------------------------------------


def test_whiten_zero_mean_unit_variance_over_valid():
    x, mask = randn(7, scale=3.0) + 5.0, make_mask()
    valid = x[mask > 0].astype(np.float64)
    out = np.asarray(adv_lib.whiten(x, mask))
    assert np.all(out[mask == 0] == 0.0)
    np.testing.assert_allclose(out[mask > 0].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[mask > 0].var(), 1.0, rtol=1e-4)
    n = valid.size
    mean = sum(valid) / n
    std = math.sqrt(sum((v - mean)**2 for v in valid) / n + 1e-8)
    close(out[mask > 0], (valid - mean) / std)
    kept = np.asarray(adv_lib.whiten(x, mask, shift_mean=False))
    close(kept[mask > 0], (valid - mean) / std + mean, rtol=1e-5, atol=1e-4)
    assert np.all(kept[mask == 0] == 0.0)
    np.testing.assert_allclose(kept[mask > 0].var(), 1.0, rtol=1e-4)


def test_remax_and_sequence_to_tokens():
    rewards, greedy = randn(8, (B,)), randn(9, (B,))
    adv = adv_lib.remax_advantages(rewards, greedy)
    close(adv, [float(r) - float(g) for r, g in zip(rewards, greedy)])
    tokens = np.asarray(adv_lib.sequence_to_tokens(adv, make_mask()))
    for b, n in enumerate(LENGTHS):
        close(tokens[b, :n], np.full(n, float(adv[b])))
        assert np.all(tokens[b, n:] == 0.0)


@pytest.mark.parametrize('k', [2, 3, 4])
def test_rloo_matches_numpy(k):
    rewards = randn(10, (12,))
    out = adv_lib.rloo_advantages(rewards, group_size=k)
    expected = []
    for i in range(12):
        group = range((i // k) * k, (i // k + 1) * k)
        others = [float(rewards[j]) for j in group if j != i]
        expected.append(float(rewards[i]) - sum(others) / len(others))
    close(out, expected)


@pytest.mark.parametrize('k', [2, 3, 4])
@pytest.mark.parametrize('normalize', [True, False])
def test_grpo_matches_numpy(k, normalize):
    rewards = randn(11, (12,))
    rewards[:k] = 0.5  # one group with identical rewards: advantage 0, no division by zero
    out = adv_lib.grpo_advantages(rewards, group_size=k, normalize=normalize)
    expected = []
    for i in range(12):
        group = [float(rewards[j]) for j in range((i // k) * k, (i // k + 1) * k)]
        mean = sum(group) / k
        std = math.sqrt(sum((g - mean)**2 for g in group) / (k - 1))
        a = float(rewards[i]) - mean
        expected.append(a / (std + 1e-4) if normalize else a)
    close(out, expected, atol=1e-4)
    assert np.all(np.asarray(out)[:k] == 0.0)


@pytest.mark.parametrize('k', [2, 4])
def test_reinforce_pp_matches_numpy(k):
    rewards = randn(12, (12,))
    mask = make_mask(LENGTHS * 2)  # [12, T], ragged lengths, two all-padding rows
    out = np.asarray(adv_lib.reinforce_pp_advantages(rewards, mask, group_size=k))
    m = np.asarray(mask, np.float64)
    r = np.asarray(rewards, np.float64)
    centred = np.array([r[i] - np.mean(r[(i // k) * k:(i // k + 1) * k]) for i in range(12)])
    tokens = centred[:, None] * m
    mean = np.sum(tokens * m) / np.sum(m)
    var = np.sum((tokens - mean)**2 * m) / np.sum(m)
    expected = (tokens - mean) / np.sqrt(var + 1e-8) * m
    close(out, expected, atol=1e-5)
    assert np.all(out[m == 0] == 0.0)


@pytest.mark.parametrize('fn', [adv_lib.rloo_advantages, adv_lib.grpo_advantages])
def test_group_sizes_are_validated(fn):
    with pytest.raises(ValueError, match='10.*4'):
        fn(jnp.zeros(10), group_size=4)
    with pytest.raises(ValueError, match='group_size must be >= 2'):
        fn(jnp.zeros(10), group_size=1)


def np_var(z):
    mean = sum(z) / len(z)
    return sum((zi - mean)**2 for zi in z) / len(z)


def test_explained_variance():
    returns, mask = randn(12, scale=2.0), make_mask()
    close(adv_lib.explained_variance(returns, returns, mask), 1.0)
    mean = returns[mask > 0].mean()
    close(adv_lib.explained_variance(np.full((B, T), mean, np.float32), returns, mask), 0.0)
    values = returns + randn(13)
    values[mask == 0] = 1e3  # garbage on padding
    r, v = returns[mask > 0].astype(np.float64), values[mask > 0].astype(np.float64)
    close(adv_lib.explained_variance(values, returns, mask), 1.0 - np_var(r - v) / np_var(r),
          rtol=1e-4)


# --- KL estimators --------------------------------------------------------------------------------


def test_kl_estimators_match_formulas_and_k3_nonnegative():
    logp, ref = randn(14, scale=3.0), randn(15, scale=3.0)
    lr = logp.astype(np.float64) - ref.astype(np.float64)
    close(pg.kl_estimate(logp, ref, kind='k1'), lr)
    close(pg.kl_estimate(logp, ref, kind='k2'), 0.5 * lr**2)
    close(pg.kl_estimate(logp, ref, kind='k3'), np.exp(-lr) - 1.0 + lr, rtol=1e-4)
    grid = np.linspace(-20.0, 20.0, 4001, dtype=np.float32)
    k3 = np.asarray(pg.kl_estimate(grid, np.zeros_like(grid), kind='k3'))
    assert np.all(k3 >= 0.0)
    assert np.asarray(pg.kl_estimate(grid, np.zeros_like(grid), kind='k2')).min() >= 0.0
    with pytest.raises(ValueError, match='k4'):
        pg.kl_estimate(logp, ref, kind='k4')


def test_kl_estimators_unbiased_monte_carlo():
    """Mean of k1 and k3 over N samples from pi is within 4 standard errors of KL(pi || mu)."""
    pi = np.array([0.30, 0.20, 0.15, 0.10, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01])
    mu = np.array([0.05, 0.05, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10, 0.15, 0.15])
    exact = float(np.sum(pi * np.log(pi / mu)))
    n = 200_000
    samples = np.random.default_rng(0).choice(10, size=n, p=pi)
    logp = np.log(pi)[samples].astype(np.float32)
    ref = np.log(mu)[samples].astype(np.float32)

    def mean_and_se(values):
        values = np.asarray(values, np.float64)
        return values.mean(), values.std(ddof=1) / math.sqrt(n)

    for kind in ('k1', 'k3'):
        mean, se = mean_and_se(pg.kl_estimate(logp, ref, kind=kind))
        assert abs(mean - exact) < 4.0 * se, (kind, mean, exact, se)
    # The test has power: k2 is biased for this pair, and so is k3 with its arguments swapped
    # (an estimate of a different quantity).
    mean, se = mean_and_se(pg.kl_estimate(logp, ref, kind='k2'))
    assert abs(mean - exact) > 4.0 * se, (mean, exact, se)
    mean, se = mean_and_se(pg.kl_estimate(ref, logp, kind='k3'))
    assert abs(mean - exact) > 4.0 * se, (mean, exact, se)


# --- per-token rewards ----------------------------------------------------------------------------


def test_token_rewards_put_score_on_last_valid_token():
    scores, kl, mask = randn(16, (B,)), randn(17), make_mask()
    out = np.asarray(pg.token_rewards(scores, kl, mask, kl_coef=0.1))
    expected = np.zeros((B, T))
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            expected[b, t] = -0.1 * kl[b, t]
        if n:
            expected[b, n - 1] += scores[b]
    close(out, expected)
    assert np.all(out[3] == 0.0)  # the all-padding row gets nothing, not even its score


def test_missing_eos_penalty_subtracts():
    scores = np.array([1.0, -2.0, 0.5], np.float32)
    out = pg.missing_eos_penalty(scores, np.array([True, False, False]), penalty=1.5)
    close(out, [1.0, -3.5, -1.0])


# --- aggregation ----------------------------------------------------------------------------------


def np_aggregate(x, lengths, mode):
    rows = sum(1 for n in lengths if n)
    if mode == 'token_mean':
        return sum(float(x[b, t]) for b, n in enumerate(lengths) for t in range(n)), sum(lengths)
    if mode == 'sequence_sum':
        return sum(float(x[b, t]) for b, n in enumerate(lengths) for t in range(n)), rows
    if mode == 'constant_length':  # Dr. GRPO: every token / (rows * T)
        return sum(float(x[b, t]) for b, n in enumerate(lengths) for t in range(n)), rows * T
    return sum(sum(float(x[b, t]) for t in range(n)) / n for b, n in enumerate(lengths) if n), rows


@pytest.mark.parametrize('mode', pg.AGGREGATE_MODES)
def test_aggregate_modes_and_microbatching(mode):
    x, mask = randn(18), make_mask()
    x[mask == 0] = np.nan  # padding must not leak, even as NaN
    total, weight = pg.aggregate(x, mask, mode=mode)
    ref_total, ref_weight = np_aggregate(x, LENGTHS, mode)
    close(total, ref_total)
    assert float(weight) == ref_weight
    # Two microbatches of three rows each, summed, give the same sum and weight.
    first = pg.aggregate(x[:3], mask[:3], mode=mode)
    second = pg.aggregate(x[3:], mask[3:], mode=mode)
    close(float(first[0]) + float(second[0]), ref_total)
    assert float(first[1]) + float(second[1]) == ref_weight


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError, match='token_sum'):
        pg.aggregate(jnp.zeros((2, 3)), jnp.ones((2, 3)), mode='token_sum')


# --- PPO policy loss ------------------------------------------------------------------------------


def np_policy_token(ratio, a, clip_low, clip_high, dual_clip):
    """Per-token loss and (clipped, dual) flags, by cases on the sign of the advantage."""
    lo, hi = 1.0 - clip_low, 1.0 + clip_high
    if a > 0:  # the objective a * r is capped once r exceeds hi
        clipped = ratio > hi
        loss = -a * hi if clipped else -a * ratio
    elif a < 0:  # the objective a * r is capped once r falls below lo
        clipped = ratio < lo
        loss = -a * lo if clipped else -a * ratio
    else:
        clipped, loss = False, 0.0
    dual = False
    if dual_clip is not None and a < 0 and loss > -dual_clip * a:
        dual, loss = True, -dual_clip * a
    return loss, clipped, dual


@pytest.mark.parametrize('mode', pg.AGGREGATE_MODES)
@pytest.mark.parametrize('clip_low,clip_high,dual_clip', [(0.2, None, None), (0.2, 0.28, None),
                                                          (0.1, 0.3, 2.0)])
def test_policy_loss_matches_numpy(mode, clip_low, clip_high, dual_clip):
    mask = make_mask()
    old = -np.abs(randn(19, scale=2.0))
    logp = old + randn(20)  # ratios from ~0.1 to ~10: every branch is taken
    logp[mask == 0] = 100.0  # garbage on padding: exp would overflow if not masked
    a = randn(21)
    high = clip_low if clip_high is None else clip_high
    per_token = np.zeros((B, T))
    n_clip = n_dual = 0
    ratios, kls = [], []
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            r = math.exp(float(logp[b, t]) - float(old[b, t]))
            loss, clipped, dual = np_policy_token(r, float(a[b, t]), clip_low, high, dual_clip)
            per_token[b, t] = loss
            n_clip += clipped
            n_dual += dual
            ratios.append(r)
            kls.append(r - 1.0 - math.log(r))
    loss_sum, weight, metrics = pg.policy_loss(logp, old, a, mask, clip_low=clip_low,
                                               clip_high=clip_high, dual_clip=dual_clip, mode=mode)
    ref_sum, ref_weight = np_aggregate(per_token, LENGTHS, mode)
    close(loss_sum, ref_sum, rtol=1e-4)
    assert float(weight) == ref_weight
    n = sum(LENGTHS)
    assert 0 < n_clip < n  # the inputs exercise clipping, so the fraction below can be wrong
    close(ratio_of(metrics['clip_fraction']), n_clip / n)
    close(ratio_of(metrics['ratio']), np.mean(ratios), rtol=1e-4)
    close(ratio_of(metrics['approx_kl']), np.mean(kls), rtol=1e-4)
    if dual_clip is None:
        assert 'dual_clip_fraction' not in metrics
    else:
        assert n_dual > 0
        close(ratio_of(metrics['dual_clip_fraction']), n_dual / n)


@pytest.mark.parametrize('mode', ['sequence_mean', 'token_mean'])
def test_gspo_sequence_ratio_value_and_gradient_match_numpy(mode):
    """Every token takes s_i = exp(mean_t log r_t), clipped per sequence; the gradient w.r.t.
    logp_t is d loss / d s_i * s_i / |y_i| (GSPO's), zero where s_i is clipped."""
    mask = make_mask()
    old = -np.abs(randn(40, scale=2.0))
    # Rows 0 and 1 leave the trust region on the side their advantage's sign clips, the others not.
    offset = np.array([0.05, -0.05, 0.0, 0.0, 0.01, -0.04], np.float32)[:, None]
    logp = old + offset + randn(41, scale=0.01)
    logp[mask == 0] = 100.0
    a_seq = np.abs(randn(42, shape=(B,))) * np.array([1, -1, 1, 1, -1, 1], np.float32)
    a = np.repeat(a_seq[:, None], T, axis=1)
    clip_low, clip_high = 0.02, 0.03
    loss = lambda lp: pg.policy_loss(lp, old, a, mask, clip_low=clip_low, clip_high=clip_high, mode=
                                     mode, level='sequence')[0]
    grad = np.asarray(jax.grad(loss)(jnp.asarray(logp)), np.float64)
    per_token, expected_grad, clipped = np.zeros((B, T)), np.zeros((B, T)), 0
    for b, n in enumerate(LENGTHS):
        if not n:
            continue
        s_i = math.exp(np.mean([float(logp[b, t]) - float(old[b, t]) for t in range(n)]))
        value, is_clipped, _ = np_policy_token(s_i, float(a_seq[b]), clip_low, clip_high, None)
        clipped += is_clipped
        for t in range(n):
            per_token[b, t] = value
            # d/d logp_t of the loss sum: -A s_i per token, weighted as the mode weighs tokens
            w = 1.0 / n if mode == 'sequence_mean' else 1.0
            expected_grad[b, t] = 0.0 if is_clipped else -float(a_seq[b]) * s_i * w
    total, _ = np_aggregate(per_token, LENGTHS, mode)
    close(loss(jnp.asarray(logp)), total, rtol=1e-4)
    assert 0 < clipped < sum(1 for n in LENGTHS if n)  # both branches are exercised
    close(grad * mask, expected_grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match='level'):
        pg.policy_loss(logp, old, a, mask, level='tokens')


def test_overlong_penalty_matches_dapo():
    lengths = np.array([0, 5, 8, 9, 11, 12, 13])
    scores = np.linspace(-1, 1, 7).astype(np.float32)
    max_len, buffer = 12, 4

    def ref(n):  # DAPO Eq. 13
        if n <= max_len - buffer:
            return 0.0
        if n <= max_len:
            return ((max_len - buffer) - n) / buffer
        return -1.0

    out = pg.overlong_penalty(scores, lengths, max_len=max_len, buffer=buffer, penalty=0.5)
    close(out, scores + 0.5 * np.array([ref(n) for n in lengths]))
    with pytest.raises(ValueError, match='buffer'):
        pg.overlong_penalty(scores, lengths, max_len=max_len, buffer=13)


def test_policy_loss_at_ratio_one_is_reinforce():
    mask = make_mask()
    logp = -np.abs(randn(22))
    a = randn(23)
    a[mask == 0] = 7.0  # garbage on padding
    n = mask.sum()

    def loss(lp):
        total, weight, _ = pg.policy_loss(lp, logp, a, mask, clip_low=0.2, clip_high=0.28,
                                          dual_clip=3.0)
        return total / weight

    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(logp))
    close(value, -np.sum(a * mask) / n)
    close(grad, -a * mask / n)
    _, _, metrics = pg.policy_loss(logp, logp, a, mask)
    close(ratio_of(metrics['clip_fraction']), 0.0)
    close(ratio_of(metrics['approx_kl']), 0.0)
    close(ratio_of(metrics['ratio']), 1.0)


def test_policy_clip_fraction_crafted():
    # (ratio, advantage) per token; clip_low 0.2, clip_high 0.28 clip the ratio to [0.8, 1.28].
    tokens = [
        (1.5, 1.0),  # clipped: -1.28 > -1.5
        (1.5, -1.0),  # not: 1.5 > 1.28 (the unclipped term is the larger loss)
        (0.5, 1.0),  # not: -0.5 > -0.8
        (0.5, -1.0),  # clipped: 0.8 > 0.5
        (1.25, 1.0),  # not with clip_high 0.28; clipped with a symmetric 0.2
        (0.75, -1.0),  # clipped: 0.8 > 0.75
        (1.1, 2.0),  # not: inside the range
        (3.0, 0.0)
    ]  # not: a zero advantage never selects the clipped term
    ratio = np.array([[r for r, _ in tokens] + [4.0]], np.float32)
    a = np.array([[adv for _, adv in tokens] + [-1.0]], np.float32)
    mask = np.array([[1.0] * len(tokens) + [0.0]], np.float32)  # the last token is padding
    logp = np.log(ratio)
    old = np.zeros_like(logp)
    total, weight, metrics = pg.policy_loss(logp, old, a, mask, clip_low=0.2, clip_high=0.28)
    assert float(weight) == 8.0
    close(ratio_of(metrics['clip_fraction']), 3 / 8)
    expected = [-1.28, 1.5, -0.5, 0.8, -1.25, 0.8, -2.2, 0.0]
    close(total, sum(expected), rtol=1e-5)
    _, _, metrics = pg.policy_loss(logp, old, a, mask, clip_low=0.2)
    close(ratio_of(metrics['clip_fraction']), 4 / 8)


def test_policy_dual_clip_crafted():
    tokens = [
        (5.0, -1.0),  # dual: max(5, 1.2) = 5 bounded by 3 * 1
        (2.0, -1.0),  # not dual: 2 < 3
        (5.0, 1.0),  # not dual: positive advantage, loss -1.2 (clipped)
        (0.5, -1.0),  # clipped to 0.8, not dual
        (9.0, -0.5)
    ]  # dual: 4.5 bounded by 1.5
    logp = np.log(np.array([[r for r, _ in tokens]], np.float32))
    a = np.array([[adv for _, adv in tokens]], np.float32)
    mask = np.ones_like(a)
    old = np.zeros_like(logp)

    def loss(lp):
        total, _, metrics = pg.policy_loss(lp, old, a, mask, clip_low=0.2, dual_clip=3.0,
                                           mode='sequence_sum')
        return total, metrics

    (total, metrics), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(logp))
    close(total, 3.0 + 2.0 - 1.2 + 0.8 + 1.5, rtol=1e-5)
    close(ratio_of(metrics['dual_clip_fraction']), 2 / 5)
    close(ratio_of(metrics['clip_fraction']), 2 / 5)  # (5, +1) and (0.5, -1)
    # Clipped and dual-clipped tokens get no gradient; the rest d(-A r)/dlogp = -A r.
    close(grad, [[0.0, 2.0, 0.0, 0.0, 0.0]])
    for bad in (1.0, 0.5):
        with pytest.raises(ValueError, match='dual_clip'):
            pg.policy_loss(logp, old, a, mask, dual_clip=bad)


# --- value loss -----------------------------------------------------------------------------------


def test_value_loss_crafted():
    # (value, old value, return) with clip 0.2.
    tokens = [
        (0.5, 0.0, 1.0),  # clipped value 0.2: max(0.25, 0.64) -> clipped
        (0.1, 0.0, 1.0),  # inside the range: both 0.81, not clipped
        (1.5, 0.0, 1.0),  # clipped value 0.2: max(0.25, 0.64) -> clipped
        (-0.5, 0.0, -1.0),  # clipped value -0.2: max(0.25, 0.64) -> clipped
        (0.5, 0.0, 0.1)
    ]  # clipped value 0.2: max(0.16, 0.01) -> unclipped
    v, old, ret = (np.array([[tok[i] for tok in tokens] + [9.0]], np.float32) for i in range(3))
    mask = np.array([[1.0] * len(tokens) + [0.0]], np.float32)
    total, weight, metrics = pg.value_loss(v, old, ret, mask, clip=0.2)
    assert float(weight) == 5.0
    close(total, 0.5 * (0.64 + 0.81 + 0.64 + 0.64 + 0.16), rtol=1e-5)
    close(ratio_of(metrics['value_clip_fraction']), 3 / 5)
    total, _, metrics = pg.value_loss(v, old, ret, mask, clip=None)
    close(total, 0.5 * (0.25 + 0.81 + 0.25 + 0.25 + 0.16), rtol=1e-5)
    close(ratio_of(metrics['value_clip_fraction']), 0.0)
    grad = jax.jit(jax.grad(lambda x: pg.value_loss(x, old, ret, mask, clip=0.2)[0]))(v)
    close(grad, [[0.0, 0.1 - 1.0, 0.0, 0.0, 0.5 - 0.1, 0.0]])


@pytest.mark.parametrize('mode', pg.AGGREGATE_MODES)
def test_value_loss_matches_numpy(mode):
    v, old, ret, mask = randn(24), randn(25), randn(26), make_mask()
    per_token = np.zeros((B, T))
    n_clip = 0
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            vt, ot, rt = float(v[b, t]), float(old[b, t]), float(ret[b, t])
            vc = min(max(vt, ot - 0.3), ot + 0.3)
            per_token[b, t] = 0.5 * max((vt - rt)**2, (vc - rt)**2)
            n_clip += (vc - rt)**2 > (vt - rt)**2
    total, weight, metrics = pg.value_loss(v, old, ret, mask, clip=0.3, mode=mode)
    ref_total, ref_weight = np_aggregate(per_token, LENGTHS, mode)
    close(total, ref_total, rtol=1e-4)
    assert float(weight) == ref_weight
    assert 0 < n_clip
    close(ratio_of(metrics['value_clip_fraction']), n_clip / sum(LENGTHS))


# --- KL loss and controller -----------------------------------------------------------------------


@pytest.mark.parametrize('kind', pg.KL_KINDS)
def test_kl_penalty_loss_value_and_gradient(kind):
    logp, ref, mask = randn(27), randn(28), make_mask()
    logp[mask == 0] = -100.0  # garbage on padding: exp(ref - logp) overflows if not masked
    total, weight = pg.kl_penalty_loss(logp, ref, mask, kind=kind)
    expected, grad_expected = 0.0, np.zeros((B, T))
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            d = float(logp[b, t]) - float(ref[b, t])
            expected += {'k1': d, 'k2': 0.5 * d * d, 'k3': math.exp(-d) - 1.0 + d}[kind]
            grad_expected[b, t] = {'k1': 1.0, 'k2': d, 'k3': 1.0 - math.exp(-d)}[kind]
    close(total, expected, rtol=1e-4)
    assert float(weight) == sum(LENGTHS)
    grad = jax.jit(jax.grad(lambda x: pg.kl_penalty_loss(x, ref, mask, kind=kind)[0]))(logp)
    close(grad, grad_expected, rtol=1e-4)


def test_adaptive_kl_coef():
    kw = {'target': 6.0, 'horizon': 10_000, 'batch_size': 256}
    assert pg.adaptive_kl_coef(0.1, 6.0, **kw) == pytest.approx(0.1)
    assert pg.adaptive_kl_coef(0.1, 6.6, **kw) == pytest.approx(0.1 * (1 + 0.1 * 256 / 10_000))
    assert pg.adaptive_kl_coef(0.1, 60.0, **kw) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    assert pg.adaptive_kl_coef(0.1, 0.0, **kw) == pytest.approx(0.1 * (1 - 0.2 * 256 / 10_000))
    assert isinstance(pg.adaptive_kl_coef(0.1, 3.0, **kw), float)
    traced = jax.jit(lambda c, k: pg.adaptive_kl_coef(c, k, **kw))(jnp.float32(0.1),
                                                                   jnp.float32(6.6))
    close(traced, 0.1 * (1 + 0.1 * 256 / 10_000))
    with pytest.raises(ValueError, match='target'):
        pg.adaptive_kl_coef(0.1, 1.0, target=0.0, horizon=1, batch_size=1)
