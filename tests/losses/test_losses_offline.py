"""The DPO family's objectives against NumPy and closed forms, and every offline loss's sums and
counts over microbatches and its refusals.

Every reference below is written independently in NumPy with log-sum-exp forms
(log sigmoid(x) = -logaddexp(0, -x)), not by calling the code under test; inputs include large
magnitudes (|h| ~ 100) to catch overflow. Sums and counts are checked to compose exactly over
microbatches and to ignore padding. (The reward and preference models' losses:
test_reward_losses.py.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import sharding
from alignjax.losses import preference, reward

from loss_refs import B, K, close, logps, np_sigmoid

# --- DPO family: NumPy references -----------------------------------------------------------------


def np_preference_losses(pc, pr, rc, rr, loss_type, beta, e=0.0, gamma=0.0, *, tau=0.05, delta=0.0,
                         nll=None, lengths=None):
    """Per-example losses in float64, each written from its paper's equation; the batch-level
    rows ('aot', 'aot_unpaired': one term per rank; 'sft': each pair's share of the token mean)
    over the whole batch given."""
    pc, pr, rc, rr = (np.asarray(a, np.float64) for a in (pc, pr, rc, rr))
    m = (pc - rc) - (pr - rr)
    h = beta * m
    softplus = lambda x: np.logaddexp(0.0, x)  # -log sigmoid(-x)
    if loss_type in ('sigmoid', 'sigmoid_norm'):  # sigmoid_norm: the caller passes averages
        return (1 - e) * softplus(-h) + e * softplus(h)
    if loss_type == 'discopop':  # the paper's mixture, as written (float64 has the range)
        w = np_sigmoid(h / tau)
        return (1 - w) * softplus(-h) + w * np.exp(-h)
    if loss_type in ('aot', 'aot_unpaired'):
        # Quantiles matched rank by rank: the k-th smallest of each side.
        a, b = ((pc - pr, rc - rr) if loss_type == 'aot' else (pc - rc, pr - rr))
        d = beta * (np.sort(a) - np.sort(b))
        return (1 - e) * softplus(-d) + e * softplus(d)
    if loss_type == 'sft':
        nll = np.asarray(nll, np.float64)
        lengths = np.ones_like(nll) if lengths is None else np.asarray(lengths, np.float64)
        # Shares whose mean over the pairs is the token mean, sum(L * nll) / sum(L).
        return len(nll) * lengths * nll / np.sum(lengths)
    if loss_type == 'robust':
        return ((1 - e) * softplus(-h) - e * softplus(h)) / (1 - 2 * e)
    if loss_type == 'ipo':
        return (m - 0.5 / beta)**2
    if loss_type == 'hinge':
        return np.maximum(0.0, 1.0 - h)
    if loss_type == 'simpo':
        z = beta * (pc - pr) - gamma
        return (1 - e) * softplus(-z) + e * softplus(z)
    if loss_type == 'exo_pair':
        # KL(q || p) over the two outcomes, q = softmax(h, 0), p = (1 - e, e).
        log_q = np.stack([h, np.zeros_like(h)]) - np.logaddexp(h, 0.0)
        log_p = np.log(np.array([1 - e, e]))[:, None]
        return np.sum(np.exp(log_q) * (log_q - log_p), axis=0)
    r_c, r_r = beta * (pc - rc), beta * (pr - rr)
    if loss_type == 'nca_pair':
        return softplus(-r_c) + 0.5 * softplus(r_c) + 0.5 * softplus(r_r)
    if loss_type == 'sppo_hard':
        return (pc - rc - 1 / (2 * beta))**2 + (pr - rr + 1 / (2 * beta))**2
    if loss_type == 'apo_zero':
        return (1 - np_sigmoid(r_c)) + np_sigmoid(r_r)
    if loss_type == 'apo_down':
        return np_sigmoid(r_c) + (1 - np_sigmoid(h))
    if loss_type == 'bco_pair':  # a classifier of chosen (label 1) and rejected (label 0)
        return softplus(-(r_c - delta)) + softplus(r_r - delta)
    raise AssertionError(loss_type)


CASES = [
    ('sigmoid', 0.0),
    ('sigmoid', 0.2),
    ('robust', 0.0),
    ('robust', 0.2),
    ('ipo', 0.0),
    ('hinge', 0.0),
    ('simpo', 0.0),
    ('simpo', 0.1),
    ('exo_pair', 1e-3),
    ('nca_pair', 0.0),
    ('sppo_hard', 0.0),
    ('apo_zero', 0.0),
    ('apo_down', 0.0),
    ('bco_pair', 0.0),
    ('aot', 0.0),
    ('aot', 0.2),
    ('aot_unpaired', 0.0),
    ('aot_unpaired', 0.2),
    ('discopop', 0.0),
    ('sft', 0.0),
    ('sigmoid_norm', 0.0),
]


def test_every_loss_type_has_a_case():
    assert sorted({t for t, _ in CASES}) == sorted(preference.LOSS_TYPES)


def chosen_nll_and_lengths(seed, b=B):
    """What 'sft' reads: per-pair mean token NLL of the chosen response and its token count."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.2, 4.0, b).astype(np.float32), rng.integers(1, 40, b).astype(np.float32))


@pytest.mark.parametrize('loss_type,e', CASES)
@pytest.mark.parametrize('beta', [0.1, 1.0])
def test_preference_losses_match_numpy(loss_type, e, beta):
    pc, pr, rc, rr = logps(seed=5)
    nll, lengths = chosen_nll_and_lengths(seed=5)
    gamma = 0.5 if loss_type == 'simpo' else 0.0
    out = preference.preference_losses(pc, pr, rc, rr, loss_type=loss_type, beta=beta,
                                       label_smoothing=e, gamma=gamma, chosen_nll=nll,
                                       chosen_lengths=lengths)
    expected = np_preference_losses(pc, pr, rc, rr, loss_type, beta, e, gamma, nll=nll,
                                    lengths=lengths)
    assert out.shape == (16,)
    # Squared losses reach ~1e5 here: compare relatively. The others are O(|h|) ~ 100.
    close(out, expected, rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize('loss_type,e', CASES)
@pytest.mark.parametrize('beta', [0.1, 1.0])
def test_preference_losses_match_numpy_in_float64(loss_type, e, beta):
    pc, pr, rc, rr = (a.astype(np.float64) for a in logps(seed=16))
    nll, lengths = (a.astype(np.float64) for a in chosen_nll_and_lengths(seed=16))
    gamma = 0.5 if loss_type == 'simpo' else 0.0
    with jax.enable_x64(True):
        out = preference.preference_losses(pc, pr, rc, rr, loss_type=loss_type, beta=beta,
                                           label_smoothing=e, gamma=gamma, discopop_tau=0.3,
                                           bco_delta=0.7, chosen_nll=nll, chosen_lengths=lengths)
        assert out.dtype == jnp.float64
    expected = np_preference_losses(pc, pr, rc, rr, loss_type, beta, e, gamma, tau=0.3, delta=0.7,
                                    nll=nll, lengths=lengths)
    close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('loss_type,e', CASES)
def test_preference_losses_stable_at_large_margins(loss_type, e):
    # h = +-100 and +-200: finite values and finite gradients, no inf - inf.
    m = jnp.tile(jnp.array([100.0, -100.0, 200.0, -200.0]), B // 4)
    zeros = jnp.zeros_like(m)
    nll, lengths = chosen_nll_and_lengths(seed=17)
    kw = dict(loss_type=loss_type, beta=1.0, label_smoothing=e, chosen_nll=nll,
              chosen_lengths=lengths)
    fn = lambda pc: jnp.sum(preference.preference_losses(pc, zeros, zeros, zeros, **kw))
    out = preference.preference_losses(m, zeros, zeros, zeros, **kw)
    close(out,
          np_preference_losses(m, zeros, zeros, zeros, loss_type, 1.0, e, nll=nll, lengths=lengths),
          rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(jax.grad(fn)(m))))


# --- closed forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize('beta', [0.01, 0.1, 1.0, 10.0])
@pytest.mark.parametrize('loss_type,e', [('sigmoid', 0.0), ('sigmoid', 0.1), ('sigmoid', 0.3),
                                         ('robust', 0.0), ('robust', 0.25)])
def test_dpo_at_reference_is_log2(beta, loss_type, e):
    pc, pr, _, _ = logps(seed=6)
    total, count, _ = preference.dpo_loss(pc, pr, pc, pr, loss_types=(loss_type,), beta=beta,
                                          label_smoothing=e)
    close(total / count, np.log(2.0), rtol=1e-6)


@pytest.mark.parametrize('beta', [0.05, 0.1, 0.5, 2.0])
def test_ipo_minimiser_is_one_over_two_beta(beta):
    zero = jnp.zeros(())
    ipo = lambda m: preference.preference_losses(m, zero, zero, zero, loss_type='ipo', beta=beta)
    target = 1.0 / (2.0 * beta)
    assert abs(float(jax.grad(ipo)(jnp.float32(target)))) < 1e-5
    assert float(jax.grad(ipo)(jnp.float32(target + 0.1))) > 0
    assert float(jax.grad(ipo)(jnp.float32(target - 0.1))) < 0
    grid = np.linspace(-3 * target, 3 * target, 601).astype(np.float32)  # contains target
    values = preference.preference_losses(grid, np.zeros_like(grid), np.zeros_like(grid),
                                          np.zeros_like(grid), loss_type='ipo', beta=beta)
    assert grid[int(np.argmin(np.asarray(values)))] == pytest.approx(target, rel=1e-5)


def test_hinge_is_zero_once_h_reaches_one():
    beta = 0.5
    m = jnp.array([2.0, 2.5, 10.0, 1.0, 0.0, -4.0])  # h = 1, 1.25, 5, 0.5, 0, -2
    zeros = jnp.zeros_like(m)
    out = preference.preference_losses(m, zeros, zeros, zeros, loss_type='hinge', beta=beta)
    close(out, [0.0, 0.0, 0.0, 0.5, 1.0, 3.0])
    grad = jax.grad(lambda x: jnp.sum(
        preference.preference_losses(x, zeros, zeros, zeros, loss_type='hinge', beta=beta)))(m)
    close(grad[1:3], [0.0, 0.0])
    close(grad[3:], [-beta] * 3)


@pytest.mark.parametrize('e', [0.0, 0.15])
def test_simpo_without_margin_is_reference_free_dpo(e):
    pc, pr, _, _ = logps(seed=7)
    zeros = np.zeros_like(pc)
    simpo = preference.preference_losses(pc, pr, zeros, zeros, loss_type='simpo', beta=2.0,
                                         label_smoothing=e, gamma=0.0)
    dpo = preference.preference_losses(pc, pr, zeros, zeros, loss_type='sigmoid', beta=2.0,
                                       label_smoothing=e)
    close(simpo, dpo, rtol=1e-6, atol=0)
    # And gamma is a margin: SimPO(gamma) equals DPO evaluated at h - gamma.
    shifted = preference.preference_losses(pc - 0.75 / 2.0, pr, zeros, zeros, loss_type='sigmoid',
                                           beta=2.0, label_smoothing=e)
    with_margin = preference.preference_losses(pc, pr, zeros, zeros, loss_type='simpo', beta=2.0,
                                               label_smoothing=e, gamma=0.75)
    close(with_margin, shifted, rtol=1e-5)
    # SimPO is reference-free: reference log-probs, if passed, are ignored.
    _, _, rc, rr = logps(seed=8)
    ignored = preference.preference_losses(pc, pr, rc, rr, loss_type='simpo', beta=2.0,
                                           label_smoothing=e, gamma=0.75)
    close(ignored, with_margin, rtol=0, atol=0)


def test_bco_shift_is_a_constant_offset_of_the_rewards():
    pc, pr, rc, rr = logps(seed=18, scale=5.0)
    beta, delta = 0.5, 1.3
    bco = lambda c, r, d: preference.preference_losses(c, r, rc, rr, loss_type='bco_pair', beta=
                                                       beta, bco_delta=d)
    # Shifting both rewards by delta and delta itself leaves the classifier's logits unchanged.
    close(bco(pc + delta / beta, pr + delta / beta, delta), bco(pc, pr, 0.0), rtol=1e-5)
    # At the reference with delta = 0 each side is log 2.
    close(bco(rc, rr, 0.0), np.full(B, 2 * np.log(2.0)), rtol=1e-6)
    # delta is a constant to the gradient, as in the paper.
    grad = jax.grad(lambda d: jnp.sum(bco(pc, pr, d)))(jnp.float32(delta))
    assert float(grad) == 0.0


def test_bco_running_shift_is_the_mean_of_batch_means():
    means = np.random.default_rng(19).normal(0.0, 2.0, 7)
    delta, seen = 0.0, 0
    for k, m in enumerate(means):
        delta, seen = preference.bco_running_shift(delta, seen, m)
        assert seen == k + 1
        assert delta == pytest.approx(np.mean(means[:k + 1]), rel=1e-12, abs=1e-12)


def test_aot_sorts_across_the_batch():
    pc, pr, rc, rr = logps(seed=20, scale=5.0)
    perm = np.random.default_rng(20).permutation(B)
    kw = dict(beta=0.5, label_smoothing=0.1)
    total = lambda t, *a: float(preference.dpo_loss(*a, loss_types=(t,), **kw)[0])
    # aot compares the policy's margin distribution with the reference's: pairing policy and
    # reference rows differently changes nothing; unpaired, the chosen side may be permuted alone.
    close(total('aot', pc[perm], pr[perm], rc, rr), total('aot', pc, pr, rc, rr), rtol=1e-5)
    close(total('aot_unpaired', pc[perm], pr, rc[perm], rr), total('aot_unpaired', pc, pr, rc, rr),
          rtol=1e-5)
    # A per-example loss does see the pairing (so the two checks above can fail).
    assert abs(total('sigmoid', pc[perm], pr[perm], rc, rr)
               - total('sigmoid', pc, pr, rc, rr)) > 1e-2
    # Margins already in the same order on both sides: aot is DPO (conservative, e) pair by pair.
    u, v = np.sort(pc - pr), np.sort(rc - rr)
    zeros = np.zeros(B, np.float32)
    aot = preference.preference_losses(u, zeros, v, zeros, loss_type='aot', **kw)
    dpo = preference.preference_losses(u, zeros, v, zeros, loss_type='sigmoid', **kw)
    close(aot, dpo, rtol=1e-6)


@pytest.mark.parametrize('loss_type', ['aot', 'aot_unpaired', 'sft'])
def test_batch_level_rows_ignore_padding(loss_type):
    pc, pr, rc, rr = logps(seed=21)
    nll, lengths = chosen_nll_and_lengths(seed=21)
    real = np.arange(B) % 3 != 1  # padding rows spread through the batch
    kw = dict(loss_types=(loss_type,), beta=0.3, label_smoothing=0.1)
    clean = preference.dpo_loss(*(a[real] for a in (pc, pr, rc, rr)), chosen_nll=nll[real],
                                chosen_lengths=lengths[real], **kw)
    expected = np_preference_losses(pc[real], pr[real], rc[real], rr[real], loss_type, 0.3, 0.1,
                                    nll=nll[real], lengths=lengths[real]).sum()
    close(clean[0], expected, rtol=1e-5)
    for x, garbage in ((pc, -1e4), (pr, 1e4), (rc, 0.0), (rr, -1e4), (nll, 1e6), (lengths, 1e3)):
        x[~real] = garbage
    f = lambda c: preference.dpo_loss(c, pr, rc, rr, chosen_nll=nll, chosen_lengths=lengths, mask=
                                      real, **kw)
    padded = f(pc)
    close(padded[0], clean[0], rtol=1e-5)
    assert float(padded[1]) == real.sum()
    if loss_type != 'sft':  # sft reads no log-probs
        grad = np.asarray(jax.grad(lambda c: f(c)[0])(jnp.asarray(pc)))
        assert np.all(np.isfinite(grad)) and np.all(grad[~real] == 0) and np.any(grad[real] != 0)


def test_batch_level_rows_sharded_equal_unsharded():
    # The sort and the token mean run over the global batch when its rows sit on 8 devices.
    pc, pr, rc, rr = logps(seed=23)
    nll, lengths = chosen_nll_and_lengths(seed=23)
    real = (np.arange(B) % 5 != 2).astype(np.float32)
    fn = jax.jit(
        functools.partial(preference.dpo_loss, loss_types=('aot', 'aot_unpaired', 'sft'), beta=0.2,
                          label_smoothing=0.1))
    args = dict(chosen_logps=pc, rejected_logps=pr, ref_chosen_logps=rc, ref_rejected_logps=rr,
                chosen_nll=nll, chosen_lengths=lengths, mask=real)
    mesh = sharding.make_mesh((1, -1, 1))
    assert mesh.size == 8
    sharded = sharding.shard_batch(args, mesh)
    assert not sharded['chosen_logps'].sharding.is_fully_replicated
    full, parts = fn(**args), fn(**sharded)
    close(parts[0], float(full[0]), rtol=1e-6)
    assert float(parts[1]) == float(full[1]) == real.sum()


def test_sft_is_the_token_mean_of_the_chosen_nll():
    pc, pr, rc, rr = logps(seed=22, scale=3.0)
    nll, lengths = chosen_nll_and_lengths(seed=22)
    total, count, _ = preference.dpo_loss(pc, pr, rc, rr, loss_types=('sigmoid', 'sft'),
                                          loss_weights=(1.0, 0.7), beta=0.1, chosen_nll=nll,
                                          chosen_lengths=lengths)
    token_mean = np.sum(nll.astype(np.float64) * lengths) / np.sum(lengths)
    sigmoid = np_preference_losses(pc, pr, rc, rr, 'sigmoid', 0.1).mean()
    close(float(total) / float(count), sigmoid + 0.7 * token_mean, rtol=1e-6)
    # Without token counts each pair weighs one: rpo_alpha's term.
    no_lengths = preference.dpo_loss(pc, pr, rc, rr, loss_types=('sigmoid', 'sft'),
                                     loss_weights=(1.0, 0.7), beta=0.1, chosen_nll=nll)[0]
    rpo = preference.dpo_loss(pc, pr, rc, rr, beta=0.1, rpo_alpha=0.7, chosen_nll=nll)[0]
    close(no_lengths, float(rpo), rtol=1e-6)
    assert abs(float(no_lengths) - float(total)) > 1e-2  # the token weighting matters here
    with pytest.raises(ValueError, match='chosen_nll'):
        preference.dpo_loss(pc, pr, rc, rr, loss_types=('sft',), beta=0.1)


def test_discopop_mixes_logistic_and_exponential():
    zeros = jnp.zeros(4)
    h = jnp.array([0.0, 30.0, -30.0, 0.1])  # beta = 1
    for tau in (0.05, 0.5):
        out = preference.preference_losses(h, zeros, zeros, zeros, loss_type='discopop', beta=1.0,
                                           discopop_tau=tau)
        # h = 0: equal weights, (log 2 + 1) / 2; far right exp(-h); far left the logistic -h.
        close(out[:3], [0.5 * (np.log(2.0) + 1.0), np.exp(-30.0), 30.0], rtol=1e-5, atol=1e-7)
    sharp, soft = (preference.preference_losses(h, zeros, zeros, zeros, loss_type='discopop',
                                                beta=1.0, discopop_tau=t)[3] for t in (0.05, 0.5))
    assert float(sharp) != pytest.approx(float(soft), rel=1e-3)  # tau is read
    with pytest.raises(ValueError, match='discopop_tau'):
        preference.dpo_loss(zeros, zeros, zeros, zeros, loss_types=('discopop',), beta=0.1,
                            discopop_tau=0.0)


# --- gradients, weighted lists, RPO ---------------------------------------------------------------


@pytest.mark.parametrize('beta', [0.1, 1.0])
def test_dpo_gradient_wrt_chosen_is_minus_beta_sigmoid_minus_h(beta):
    pc, pr, rc, rr = logps(seed=8, scale=10.0)
    grad = jax.grad(lambda x: preference.dpo_loss(x, pr, rc, rr, beta=beta)[0])(jnp.asarray(pc))
    h = beta * ((pc.astype(np.float64) - rc) - (pr - rr))
    close(grad, -beta * np_sigmoid(-h), rtol=1e-4, atol=1e-7)


def test_weighted_list_of_types():
    pc, pr, rc, rr = logps(seed=9, scale=3.0)
    total, count, _ = preference.dpo_loss(pc, pr, rc, rr, loss_types=('sigmoid', 'ipo'),
                                          loss_weights=(1.0, 0.5), beta=0.3)
    expected = (np_preference_losses(pc, pr, rc, rr, 'sigmoid', 0.3)
                + 0.5 * np_preference_losses(pc, pr, rc, rr, 'ipo', 0.3))
    close(total, np.sum(expected), rtol=1e-5)
    assert float(count) == 16
    # Default weights are one each; a single name is accepted too.
    single = preference.dpo_loss(pc, pr, rc, rr, loss_types='hinge', beta=0.3)[0]
    pair = preference.dpo_loss(pc, pr, rc, rr, loss_types=('sigmoid', 'hinge'), beta=0.3)[0]
    sigmoid = preference.dpo_loss(pc, pr, rc, rr, beta=0.3)[0]
    close(pair, float(single) + float(sigmoid), rtol=1e-6)


def test_rpo_adds_alpha_times_chosen_nll():
    pc, pr, rc, rr = logps(seed=10, scale=3.0)
    nll = np.random.default_rng(10).uniform(0.5, 3.0, 16).astype(np.float32)
    base = preference.dpo_loss(pc, pr, rc, rr, beta=0.1)[0]
    rpo = preference.dpo_loss(pc, pr, rc, rr, beta=0.1, rpo_alpha=0.4, chosen_nll=nll)[0]
    close(rpo, float(base) + 0.4 * np.sum(nll.astype(np.float64)), rtol=1e-6)
    # The gradient of the NLL term goes to chosen_nll, one alpha per example.
    g = jax.grad(
        lambda n: preference.dpo_loss(pc, pr, rc, rr, beta=0.1, rpo_alpha=0.4, chosen_nll=n)[0])(
            jnp.asarray(nll))
    close(g, np.full(16, 0.4))
    with pytest.raises(ValueError, match='chosen_nll'):
        preference.dpo_loss(pc, pr, rc, rr, beta=0.1, rpo_alpha=0.4)


def test_metrics_match_numpy():
    pc, pr, rc, rr = logps(seed=11, scale=5.0)
    pc[0], rc[0], pr[0], rr[0] = -1.0, -2.0, -3.0, -4.0  # a tie: margin 0 is not "correct"
    _, count, metrics = preference.dpo_loss(pc, pr, rc, rr, beta=0.5)
    rew_c = 0.5 * (pc.astype(np.float64) - rc)
    rew_r = 0.5 * (pr.astype(np.float64) - rr)
    expected = {
        'rewards/chosen': rew_c.sum(),
        'rewards/rejected': rew_r.sum(),
        'rewards/margin': (rew_c - rew_r).sum(),
        'rewards/accuracy': float(np.sum(rew_c > rew_r)),
        'logps/chosen': pc.astype(np.float64).sum(),
        'logps/rejected': pr.astype(np.float64).sum(),
    }
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        s, n = metrics[name]
        close(s, value, rtol=1e-5, atol=1e-4)
        assert float(n) == float(count) == 16


# --- sums and counts compose over microbatches; padding is ignored --------------------------------


def test_split_batch_sums_reproduce_full_mean():
    pc, pr, rc, rr = logps(seed=12)
    nll = np.random.default_rng(12).uniform(0, 2, B).astype(np.float32)
    # Jitted: one compile per batch shape instead of one per eager op.
    dpo = jax.jit(
        functools.partial(preference.dpo_loss, loss_types=('sigmoid', 'ipo', 'robust'),
                          loss_weights=(1.0, 0.01, 0.5), beta=0.1, label_smoothing=0.1,
                          rpo_alpha=0.2))
    halves = (slice(0, B // 2), slice(B // 2, B))
    full_sum, full_count, full_metrics = dpo(pc, pr, rc, rr, chosen_nll=nll)
    total, count = 0.0, 0.0
    metric_sums = {name: 0.0 for name in full_metrics}
    for part in halves:
        s, n, m = dpo(pc[part], pr[part], rc[part], rr[part], chosen_nll=nll[part])
        total, count = total + float(s), count + float(n)
        for name in metric_sums:
            metric_sums[name] += float(m[name][0])
    assert count == float(full_count) == B
    close(total / count, float(full_sum) / float(full_count), rtol=1e-6)
    for name, (s, n) in full_metrics.items():
        close(metric_sums[name] / count, float(s) / float(n), rtol=1e-5, atol=1e-6)

    rng = np.random.default_rng(13)
    r_c, r_r = rng.normal(size=(2, B, K)).astype(np.float32)
    margin = rng.uniform(size=B).astype(np.float32)
    bradley_terry = jax.jit(
        lambda c, r, m: reward.bradley_terry_loss(c, r, margin=m, centering=0.01))
    preference_model = jax.jit(lambda c, r, _: preference.preference_model_loss(c, r))
    for loss, args in [(bradley_terry, (r_c, r_r, margin)),
                       (preference_model, (r_c[:, 0], r_r[:, 0], margin))]:
        full = loss(*args)
        parts = [loss(*(a[p] for a in args)) for p in halves]
        close(
            sum(float(s) for s, _ in parts) / sum(float(n) for _, n in parts),
            float(full[0]) / float(full[1]), rtol=1e-6)


def test_dpo_padding_does_not_change_the_loss():
    pc, pr, rc, rr = logps(seed=14)
    real = np.arange(B) < 10
    kw = dict(beta=0.1, loss_types=('sigmoid', 'hinge'))
    clean = preference.dpo_loss(pc, pr, rc, rr, mask=real, **kw)
    expected = (np_preference_losses(pc, pr, rc, rr, 'sigmoid', 0.1)
                + np_preference_losses(pc, pr, rc, rr, 'hinge', 0.1))[real].sum()
    close(clean[0], expected, rtol=1e-5)
    assert float(clean[1]) == 10
    for x, garbage in ((pc, -1e4), (pr, 0.0), (rc, 0.0), (rr, -1e4)):
        x[~real] = garbage
    padded = preference.dpo_loss(pc, pr, rc, rr, mask=real, **kw)
    close(padded[0], clean[0], rtol=1e-6)
    assert float(padded[1]) == 10
    for name in clean[2]:
        close(padded[2][name][0], clean[2][name][0], rtol=1e-6)
        assert float(padded[2][name][1]) == 10
    total, count = preference.preference_model_loss(pc, pr, mask=real)
    close(
        total,
        np.sum(
            np.logaddexp(0.0, -pc[real].astype(np.float64))
            + np.logaddexp(0.0, pr[real].astype(np.float64))), rtol=1e-6)
    assert float(count) == 20


def test_dpo_loss_jits():
    pc, pr, rc, rr = logps(seed=15)
    fn = jax.jit(lambda *a: preference.dpo_loss(*a, loss_types=('sigmoid', 'ipo'), beta=0.1)[0])
    close(fn(pc, pr, rc, rr),
          preference.dpo_loss(pc, pr, rc, rr, loss_types=('sigmoid', 'ipo'), beta=0.1)[0],
          rtol=1e-6)
    # A traced beta skips the Python-side check and still computes.
    traced = jax.jit(lambda b: preference.dpo_loss(pc, pr, rc, rr, beta=b)[0])(0.1)
    close(traced, preference.dpo_loss(pc, pr, rc, rr, beta=0.1)[0], rtol=1e-6)


# --- validation -----------------------------------------------------------------------------------


def test_validation_errors():
    x = jnp.zeros(3)
    with pytest.raises(ValueError, match=r'loss\.beta'):
        preference.dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match=r'loss\.beta'):
        preference.preference_losses(x, x, x, x, loss_type='ipo', beta=-1.0)
    with pytest.raises(ValueError, match="'kto'.*sigmoid.*ipo"):
        preference.dpo_loss(x, x, x, x, loss_types=('sigmoid', 'kto'), beta=0.1)
    with pytest.raises(ValueError, match='robust'):
        preference.dpo_loss(x, x, x, x, loss_types=('robust',), beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match='exo_pair'):
        preference.dpo_loss(x, x, x, x, loss_types=('exo_pair',), beta=0.1, label_smoothing=0.0)
    with pytest.raises(ValueError, match='label_smoothing'):
        preference.dpo_loss(x, x, x, x, beta=0.1, label_smoothing=-0.1)
    with pytest.raises(ValueError, match='weights'):
        preference.dpo_loss(x, x, x, x, loss_types=('sigmoid', 'ipo'), loss_weights=(1.0,),
                            beta=0.1)
    with pytest.raises(ValueError, match='rpo_alpha'):
        preference.dpo_loss(x, x, x, x, beta=0.1, rpo_alpha=-1.0, chosen_nll=x)
    with pytest.raises(ValueError, match='r_chosen'):
        reward.bradley_terry_loss(jnp.zeros(3), jnp.zeros(4))
