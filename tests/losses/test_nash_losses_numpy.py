"""The Nash losses of alignjax.losses.nash on random rows, against NumPy written in the test.

Row weights mask padding (garbage there reaches neither value nor gradient), soft labels equal
the label expectation of hard ones, and the losses agree with the DPO-family losses where they
coincide. The tabular equivalences are in tests/losses/test_nash_losses.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.losses import nash
from alignjax.losses import preference as preference_lib


@pytest.fixture(autouse=True)
def x64():
    """float64 for this module's tests only (the context manager restores the setting)."""
    with jax.enable_x64(True):
        yield


B = 7
WEIGHT = np.array([1.0, 0.0, 2.0, 1.0, 0.5, 0.0, 1.0])  # rows 1 and 5 are padding


def rand(seed, shape=(B,), scale=3.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def with_garbage(x):
    """x with nan on the padding rows: it must reach neither the value nor the gradient."""
    x = np.array(x, np.float64)
    x[WEIGHT == 0] = np.nan
    return x


def reference_sum(per_row):
    return sum(w * v for w, v in zip(WEIGHT, per_row) if w > 0), WEIGHT.sum()


def check(out, per_row):
    total, count = out
    want_total, want_count = reference_sum(per_row)
    np.testing.assert_allclose(float(total), want_total, rtol=1e-12)
    np.testing.assert_allclose(float(count), want_count, rtol=0)


def log_sigmoid(x):
    return -np.log1p(np.exp(-x)) if x > 0 else x - np.log1p(np.exp(x))


def jitted(fn, **coefficients):
    """fn with its keyword coefficients fixed, jitted: one compile rather than one per op."""
    return jax.jit(functools.partial(fn, **coefficients))


def padding_gradient(loss, args, **kwargs):
    """Gradient of a loss sum w.r.t. its first argument; must be finite and 0 on padding."""
    grad = jax.jit(jax.grad(lambda x, *rest: loss(x, *rest, **kwargs)[0]))(*args)
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)) and not np.any(grad[WEIGHT == 0]), grad
    assert np.any(grad[WEIGHT > 0])


def test_advantages_against_numpy():
    pref, logp, ref, anchor = rand(0)**2 / 20, rand(1), rand(2), rand(3)
    tau, eta = 0.1, 0.7
    nash_md = jitted(nash.nash_md_advantages, tau=tau)
    proximal = jitted(nash.proximal_advantages, tau=tau, eta=eta)
    md, mp = nash_md(pref, logp, ref), proximal(pref, logp, ref, anchor)
    for i in range(B):
        np.testing.assert_allclose(md[i], pref[i] - 0.5 - tau * (logp[i] - ref[i]), rtol=1e-13)
        np.testing.assert_allclose(
            mp[i], pref[i] - 0.5 - tau * (logp[i] - ref[i]) - (logp[i] - anchor[i]) / eta,
            rtol=1e-13)
    # Advantages carry no gradient, whichever input it would come from.
    grads = jax.jit(
        jax.grad(lambda *args: jnp.sum(nash_md(*args) + proximal(*args, anchor)),
                 argnums=(0, 1, 2)))(pref, logp, ref)
    assert not np.any(np.asarray(grads))
    with pytest.raises(ValueError, match='eta'):
        nash.proximal_advantages(pref, logp, ref, anchor, tau=tau, eta=0.0)


def test_group_win_rates_against_numpy_and_invalid_shapes():
    m = np.random.default_rng(0).uniform(size=(3, 4, 4))
    m[:, np.arange(4), np.arange(4)] = np.nan  # the diagonal is ignored
    got = np.asarray(nash.group_win_rates(m))
    for g in range(3):
        for i in range(4):
            want = sum(m[g, i, j] for j in range(4) if j != i) / 3
            np.testing.assert_allclose(got[g, i], want, rtol=1e-14)
    with pytest.raises(ValueError, match='k >= 2'):
        nash.group_win_rates(np.full((2, 1, 1), 0.5))
    with pytest.raises(ValueError, match=r'\[G, k, k\]'):
        nash.group_win_rates(np.full((2, 3), 0.5))


def test_inpo_loss_against_numpy_soft_and_hard_labels():
    lw, ll, rw, rl, aw, al = (rand(s) for s in range(6))
    p = np.random.default_rng(7).uniform(size=B)
    eta, tau = 0.8, 0.3
    inpo = jitted(nash.inpo_loss, eta=eta, tau=tau)
    h = (lw - ll) - eta * tau * (rw - rl) - (1 - eta * tau) * (aw - al)
    args = [with_garbage(x) for x in (lw, ll, rw, rl, aw, al)]
    hard = inpo(*args, weight=WEIGHT)
    check(hard, [(hi - eta / 2)**2 for hi in h])
    soft = inpo(*args, prob_w=with_garbage(p), weight=WEIGHT)
    check(soft, [pk * (hk - eta / 2)**2 + (1 - pk) * (hk + eta / 2)**2 for pk, hk in zip(p, h)])
    # The soft loss is the label expectation of the hard one (the loser first when the second
    # response wins); p = 1 is the hard loss.
    swapped = [args[i] for i in (1, 0, 3, 2, 5, 4)]
    first_wins = inpo(*args, weight=WEIGHT * p)
    second_wins = inpo(*swapped, weight=WEIGHT * (1 - p))
    np.testing.assert_allclose(float(soft[0]), float(first_wins[0] + second_wins[0]), rtol=1e-12)
    ones = inpo(*args, prob_w=np.ones(B), weight=WEIGHT)
    np.testing.assert_allclose(float(ones[0]), float(hard[0]), rtol=1e-14)
    # Unweighted: every row counts once.
    total, count = inpo(lw, ll, rw, rl, aw, al)
    np.testing.assert_allclose(float(total), np.sum((h - eta / 2)**2), rtol=1e-12)
    assert float(count) == B
    padding_gradient(inpo, args, prob_w=p, weight=WEIGHT)
    with pytest.raises(ValueError, match='eta'):
        nash.inpo_loss(*args, eta=0.0, tau=tau)


def test_dno_loss_against_numpy():
    la, lb, aa, ab = (rand(s) for s in range(4))
    target = np.asarray(nash.dno_target(rand(5, scale=0.3), rand(6, scale=0.3)))
    eta = 0.4
    dno = jitted(nash.dno_loss, eta=eta)
    z = eta * ((la - aa) - (lb - ab))
    args = [with_garbage(x) for x in (la, lb, aa, ab, target)]
    check(dno(*args, weight=WEIGHT),
          [-(t * log_sigmoid(zk) + (1 - t) * log_sigmoid(-zk)) for t, zk in zip(target, z)])
    # Hard targets are DPO with beta = eta and pi_t as the reference.
    hard = dno(la, lb, aa, ab, np.ones(B))
    dpo = preference_lib.preference_losses(la, lb, aa, ab, loss_type='sigmoid', beta=eta)
    np.testing.assert_allclose(float(hard[0]), float(np.sum(dpo)), rtol=1e-12)
    padding_gradient(dno, args, weight=WEIGHT)


def test_sppo_loss_against_numpy():
    logp, anchor = rand(0), rand(1)
    win = np.random.default_rng(2).uniform(size=B)
    log_z = rand(3, scale=0.5)
    eta = 1.5
    sppo = jitted(nash.sppo_loss, eta=eta)
    args = [with_garbage(x) for x in (logp, anchor, win)]
    check(sppo(*args, weight=WEIGHT),
          [(lp - a - eta * (w - 0.5))**2 for lp, a, w in zip(logp, anchor, win)])
    check(sppo(*args, log_partition=with_garbage(log_z), weight=WEIGHT),
          [(lp - a - (eta * w - z))**2 for lp, a, w, z in zip(logp, anchor, win, log_z)])
    # With win rates 1 and 0 it is preference.py's 'sppo_hard' with beta = 1 / eta.
    # (The same [7] shape as above, the last row masked: no recompilation.)
    hard = sppo(logp, anchor, np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5]),
                weight=np.array([1.0] * 6 + [0.0]))
    want = preference_lib.preference_losses(logp[:3], logp[3:6], anchor[:3], anchor[3:6],
                                            loss_type='sppo_hard', beta=1.0 / eta)
    np.testing.assert_allclose(float(hard[0]), float(np.sum(want)), rtol=1e-12)
    padding_gradient(sppo, args, weight=WEIGHT)
    groups = np.random.default_rng(4).uniform(size=(2, 5))
    np.testing.assert_allclose(
        jitted(nash.sppo_log_partition, eta=eta)(groups),
        np.log(np.mean(np.exp(eta * groups), axis=1)), rtol=1e-13)


def test_online_ipo_loss_against_numpy():
    ra, rb = rand(0), rand(1)
    p = np.random.default_rng(2).uniform(size=B)
    p[0], p[2] = 1.0, 0.0  # two hard labels
    tau = 0.25
    online_ipo = jitted(nash.online_ipo_loss, tau=tau)
    args = [with_garbage(x) for x in (ra, rb, p)]
    check(online_ipo(*args, weight=WEIGHT), [
        pk * (a - b - 1 / (2 * tau))**2 + (1 - pk) * (a - b + 1 / (2 * tau))**2
        for a, b, pk in zip(ra, rb, p)
    ])
    # A hard label is IPO (preference.py) with beta = tau; label 0 swaps the pair.
    zeros = np.zeros(B)
    ipo = preference_lib.preference_losses(ra, rb, zeros, zeros, loss_type='ipo', beta=tau)
    swapped = preference_lib.preference_losses(rb, ra, zeros, zeros, loss_type='ipo', beta=tau)
    per_row = np.asarray(jax.vmap(lambda *r: online_ipo(*r)[0])(ra, rb, p))
    np.testing.assert_allclose(per_row[[0, 2]], [ipo[0], swapped[2]], rtol=1e-12)
    padding_gradient(online_ipo, args, weight=WEIGHT)
    with pytest.raises(ValueError, match='tau'):
        nash.online_ipo_loss(ra, rb, p, tau=0.0)


def test_float32_inputs_stay_float32():
    def all_losses(*args):
        return (nash.sppo_loss(*args[:3], eta=1.0), nash.inpo_loss(*args, eta=1.0, tau=0.1),
                nash.dno_loss(*args[:5], eta=1.0), nash.online_ipo_loss(*args[:3], tau=0.1))

    for x64_on in (True, False):
        with jax.enable_x64(x64_on):
            outs = jax.jit(all_losses)(*[np.full(3, 0.5, np.float32)] * 6)
            assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(outs)), outs
