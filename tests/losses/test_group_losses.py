"""The group losses (`losses/group.py`): P3O, CoPG, RAFT and online DPO's pairs, each against an
independent NumPy (float64) computation of its equation, values and gradients, to 1e-6
(relative; the losses compute in float32)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.losses import group, preference


def rng(seed):
    return np.random.default_rng(seed)


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol, atol=tol)


def p3o_reference(logp, old, r, clip, joint):
    total, clipped = 0.0, 0
    for i in range(0, len(logp), 2):
        a = (r[i] - r[i + 1]) / 2
        if joint:
            rho = math.exp((logp[i] - old[i]) - (logp[i + 1] - old[i + 1]))
            terms = [(a, rho)]
        else:
            terms = [(a, math.exp(logp[i] - old[i])), (-a, math.exp(logp[i + 1] - old[i + 1]))]
        for adv, rho in terms:
            plain, cut = -adv * rho, -adv * min(max(rho, 1 - clip), 1 + clip)
            total += max(plain, cut)
            clipped += cut > plain
    return total, clipped


@pytest.mark.parametrize('joint', [False, True])
def test_p3o_matches_numpy_and_its_gradient_at_ratio_one(joint):
    g = rng(0)
    old = -np.abs(g.normal(size=12)) * 5
    logp = old + g.normal(scale=0.3, size=12)  # ratios ~0.5-2: both branches
    r = g.normal(size=12)
    total, n, m = group.p3o_loss(logp, old, r, clip=0.2, joint=joint)
    ref_total, ref_clipped = p3o_reference(logp, old, r, 0.2, joint)
    close(total, ref_total)
    assert float(n) == 6 and 0 < ref_clipped < (6 if joint else 12)
    close(m['clip_fraction'][0], ref_clipped)
    # At rho = 1 the gradient is -(R1 - R2) / 2 on logp_1 and +(R1 - R2) / 2 on logp_2.
    grad = jax.grad(lambda lp: group.p3o_loss(lp, old, r, joint=joint)[0])(jnp.asarray(old))
    half = (r[0::2] - r[1::2]) / 2
    close(grad, np.stack([-half, half], axis=1).reshape(-1))
    with pytest.raises(ValueError, match='divisible'):
        group.p3o_loss(logp[:5], old[:5], r[:5])


def test_copg_matches_numpy_is_ipo_scaled_and_zero_at_the_optimum():
    g = rng(1)
    logp, ref, r = -np.abs(g.normal(size=(3, 8))) * 4
    beta = 0.3
    h = logp - ref
    resid = (r[0::2] - r[1::2]) - beta * (h[0::2] - h[1::2])
    total, n, m = group.copg_loss(logp, ref, r, beta=beta)
    close(total, 0.5 * np.sum(resid**2))
    assert float(n) == 4
    close(m['copg_residual'][0], np.sum(np.abs(resid)))
    grad = jax.grad(lambda lp: group.copg_loss(lp, ref, r, beta=beta)[0])(jnp.asarray(logp))
    close(grad, np.stack([-beta * resid, beta * resid], axis=1).reshape(-1))
    # R(y) - R(y') = 1/2: half of beta^2 times IPO on the pair
    half = np.where(np.arange(8) % 2 == 0, 0.5, 0.0)
    ipo = preference.preference_losses(logp[0::2], logp[1::2], ref[0::2], ref[1::2],
                                       loss_type='ipo', beta=beta)
    close(group.copg_loss(logp, ref, half, beta=beta)[0], 0.5 * beta**2 * float(np.sum(ipo)))
    # pi* proportional to mu exp(R / beta): h = R / beta + c(x) makes every residual zero
    close(group.copg_loss(ref + r / beta + 3.0, ref, r, beta=beta)[0], 0.0, tol=1e-9)


def test_raft_fine_tunes_on_the_best_of_each_group():
    g = rng(2)
    k, n = 3, 9
    token_logp = -np.abs(g.normal(size=(n, 5)))
    mask = (np.arange(5)[None] < g.integers(1, 6, n)[:, None]).astype(np.float64)
    r = np.array([0.1, 0.9, 0.3, 2.0, 2.0, -1.0, -5.0, -4.0, -4.5])  # a tie: the first wins
    best = [1, 3, 7]
    total, count, m = group.raft_loss(token_logp, mask, r, k=k)
    close(total, -sum(np.sum(token_logp[b] * mask[b]) for b in best))
    close(count, sum(mask[b].sum() for b in best))
    close(m['winner_return'][0], 0.9 + 2.0 - 4.0)


@pytest.mark.parametrize('rule', group.PAIRINGS)
def test_online_dpo_pairs_and_loss_match_numpy(rule):
    g = rng(3)
    k = 4
    r = np.array([0.2, 0.8, -0.1, 0.5, 1.0, 1.0, 1.0, 1.0, 3.0, -2.0, 0.0, 1.0])  # group 1 tied:
    # its pair (first against first, or against the second) has weight 0
    logp, ref = -np.abs(g.normal(size=(2, 12))) * 3
    chosen, rejected, weight = (np.asarray(x) for x in group.preference_pairs(r, k, rule))
    np.testing.assert_array_equal(chosen, [1, 4, 8])
    np.testing.assert_array_equal(rejected, [2, 4, 9] if rule == 'best_worst' else [0, 5, 9])
    np.testing.assert_array_equal(weight, [1, 0, 1])
    beta = 0.2
    total, count, m = group.online_dpo_loss(logp, ref, r, k=k, beta=beta, rule=rule)
    z = beta * ((logp[chosen] - ref[chosen]) - (logp[rejected] - ref[rejected]))
    close(total, np.sum(weight * np.log1p(np.exp(-z))))
    close(count, 2.0)
    close(m['pairs_kept'][0], 2.0)
    all_tied = group.online_dpo_loss(logp, ref, np.ones(12), k=k, beta=beta, rule=rule)
    assert float(all_tied[0]) == 0.0 and float(all_tied[1]) > 0  # no 0 / 0
    with pytest.raises(ValueError, match='pairing'):
        group.preference_pairs(r, k, 'worst_best')
