"""Group objectives of the online family: losses that read a prompt's k samples together.

Rows [i * k, (i + 1) * k) of every input are the k samples of prompt i (the rollout's layout).
Inputs are per-sequence: logp = log pi(y | x) (differentiated), old_logp = log pi_old(y | x) of
the policy that sampled, ref_logp = log mu(y | x) of the frozen reference (each the sum of the
response's token log-probs), and returns R(x, y): the score, minus an in-reward KL where the
algorithm has one. Each loss returns (sum, count, metrics), metrics (sum, count) pairs, so that
gradient accumulation divides once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alignjax.losses import preference

PAIRINGS = ('best_worst', 'best_random')


def _groups(x, k: int, what: str) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 1 or k < 2 or x.shape[0] % k:
        raise ValueError(f'{what}: needs [N] inputs with N divisible by a group size k >= 2, got '
                         f'shape {x.shape} and k={k}')
    return x.reshape(-1, k)


def _pairs(x, what: str):
    g = _groups(x, 2, what)
    return g[:, 0], g[:, 1]


def p3o_loss(logp, old_logp, returns, *, clip: float = 0.2, joint: bool = False):
    """Pairwise PPO, P3O (Wu et al. 2023, "Pairwise Proximal Policy Optimization: Harnessing
    Relative Feedback for LLM Alignment"), on pairs (k = 2) of one prompt's samples.

    Each response's advantage is half the pair's return difference, A_1 = (R_1 - R_2) / 2 = -A_2
    (invariant to any per-prompt shift of the reward), with a trajectory-level ratio
    rho_i = pi(y_i | x) / pi_old(y_i | x) = exp(logp_i - old_logp_i), clipped per trajectory:

        separate (default):  l = sum_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps))
        joint:               l = max(-A_1 rho, -A_1 clip(rho, 1 - eps, 1 + eps)),
                             rho = rho_1 / rho_2

    At rho = 1 both have the gradient -(R_1 - R_2) / 2 * grad (log pi(y_1) - log pi(y_2)): the
    log-prob difference weighted by the reward difference.

    Returns:
      (loss_sum, number of pairs, metrics: clip_fraction over trajectories (or pairs), ratio).
    """
    lp1, lp2 = _pairs(logp, 'p3o_loss')
    old1, old2 = (jax.lax.stop_gradient(v) for v in _pairs(old_logp, 'p3o_loss'))
    r1, r2 = (jax.lax.stop_gradient(v) for v in _pairs(returns, 'p3o_loss'))
    a = (r1 - r2) / 2.0

    def clipped(adv, log_ratio):
        rho = jnp.exp(log_ratio)
        plain, cut = -adv * rho, -adv * jnp.clip(rho, 1.0 - clip, 1.0 + clip)
        return jnp.maximum(plain, cut), cut > plain, rho

    if joint:
        per_pair, is_clipped, rho = clipped(a, (lp1 - old1) - (lp2 - old2))
        n = jnp.float32(per_pair.shape[0])
        metrics = {'clip_fraction': (jnp.sum(is_clipped), n), 'ratio': (jnp.sum(rho), n)}
    else:
        l1, c1, rho1 = clipped(a, lp1 - old1)
        l2, c2, rho2 = clipped(-a, lp2 - old2)
        per_pair = l1 + l2
        n = jnp.float32(2 * per_pair.shape[0])
        metrics = {
            'clip_fraction': (jnp.sum(c1) + jnp.sum(c2), n),
            'ratio': (jnp.sum(rho1) + jnp.sum(rho2), n)
        }
    metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
    return jnp.sum(per_pair), jnp.float32(per_pair.shape[0]), metrics


def copg_loss(logp, ref_logp, returns, *, beta: float):
    """Contrastive Policy Gradient, CoPG (Flet-Berliac et al. 2024, "Contrastive Policy
    Gradient: Aligning LLMs on sequence-level scores in a supervised-friendly fashion"), on
    pairs (k = 2) sampled by any behaviour policy, with no importance sampling:

        l = 1/2 * (R(y) - R(y') - beta * (h(y) - h(y')))^2,   h(y) = log pi(y | x) - log mu(y | x).

    Its gradient -(R(y) - R(y') - beta * (h(y) - h(y'))) * beta * grad (log pi(y) - log pi(y'))
    is a policy gradient with the pair's other response as baseline; the loss is zero for every
    pair exactly at pi* proportional to mu * exp(R / beta), whatever policy sampled the pairs. With
    R(y) - R(y') = 1/2 it is beta^2 / 2 times IPO's (h(y) - h(y') - 1 / (2 beta))^2.

    Returns:
      (loss_sum, number of pairs, metrics: 'copg_residual', the mean absolute residual).
    """
    lp1, lp2 = _pairs(logp, 'copg_loss')
    ref1, ref2 = _pairs(ref_logp, 'copg_loss')
    r1, r2 = (jax.lax.stop_gradient(v) for v in _pairs(returns, 'copg_loss'))
    residual = (r1 - r2) - beta * ((lp1 - ref1) - (lp2 - ref2))
    n = jnp.float32(residual.shape[0])
    return (jnp.sum(0.5 * residual**2), n,
            {'copg_residual': (jax.lax.stop_gradient(jnp.sum(jnp.abs(residual))), n)})


def best_of(returns, k: int, what: str = 'best_of') -> jax.Array:
    """[G] the row index of each group's best sample (the first on ties)."""
    g = _groups(returns, k, what)
    return jnp.argmax(g, axis=1) + k * jnp.arange(g.shape[0])


def raft_loss(token_logp, mask, returns, *, k: int):
    """RAFT, reward-ranked fine-tuning (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for
    Generative Foundation Model Alignment"): of each prompt's k samples keep the best by return
    (best-of-k), and fine-tune on the winners with the token NLL:

        l = -sum_{winners} sum_t log pi(y_t | x, y_<t) / (their number of tokens)

    Args:
      token_logp: [N, R] the policy's log-probs of the sampled tokens (differentiated).
      mask: [N, R] 1 on response tokens.
      returns: [N] the samples' returns.
      k: samples a prompt.

    Returns:
      (NLL sum over the winners' tokens, their token count, metrics: 'winner_return').
    """
    best = best_of(returns, k, 'raft_loss')
    m = jnp.asarray(mask, jnp.float32)[best]
    n = jnp.float32(best.shape[0])
    won = jax.lax.stop_gradient(jnp.asarray(returns, jnp.float32)[best])
    return (-jnp.sum(jnp.asarray(token_logp, jnp.float32)[best] * m), jnp.sum(m),
            {'winner_return': (jnp.sum(won), n)})


def preference_pairs(returns, k: int, rule: str = 'best_worst'):
    """(chosen rows [G], rejected rows [G], weight [G]) of each prompt's k samples, by `rule`:
    'best_worst' (RLHF Workflow's: the highest return against the lowest) or 'best_random' (the
    best against the first other sample: the samples being i.i.d., a uniform draw). A group whose
    returns are all equal has no preference: weight 0."""
    if rule not in PAIRINGS:
        raise ValueError(f'pairing rule must be one of {PAIRINGS}, got {rule!r}')
    g = _groups(returns, k, 'preference_pairs')
    base = k * jnp.arange(g.shape[0])
    best = jnp.argmax(g, axis=1)
    if rule == 'best_worst':
        other = jnp.argmin(g, axis=1)
    else:
        other = jnp.where(best == 0, 1, 0)
    weight = (jnp.max(g, axis=1) > jnp.min(g, axis=1)).astype(jnp.float32)
    return best + base, other + base, weight


def online_dpo_loss(logp, ref_logp, returns, *, k: int, beta: float, rule: str = 'best_worst',
                    loss_type: str = 'sigmoid'):
    """Online iterative DPO (Xiong et al. 2024, "Iterative Preference Learning from Human
    Feedback"; Dong et al. 2024, "RLHF Workflow: From Reward Modeling to Online RLHF"): each
    round the current policy samples k responses a prompt, a reward ranks them, and the pairs of
    `preference_pairs(returns, k, rule)` take DPO steps against the frozen reference mu:

        l = -log sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r)))

    (or another member of `preference.PAIR_LOSSES`), over the groups that have a preference.

    Returns:
      (loss_sum, number of preferred pairs, metrics: DPO's rewards/*, and 'pairs_kept'); the
      count is floored at 1e-6, so that a batch without a preferred pair contributes a zero
      loss rather than 0 / 0.
    """
    chosen, rejected, weight = preference_pairs(returns, k, rule)
    logp, ref_logp = jnp.asarray(logp, jnp.float32), jnp.asarray(ref_logp, jnp.float32)
    total, count, metrics = preference.dpo_loss(logp[chosen], logp[rejected], ref_logp[chosen],
                                                ref_logp[rejected], loss_types=(loss_type,),
                                                beta=beta, mask=weight)
    metrics['pairs_kept'] = (jnp.sum(weight), jnp.float32(weight.shape[0]))
    return total, jnp.maximum(count, 1e-6), metrics
