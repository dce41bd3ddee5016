"""Best-of-n sampling against a proxy reward, measured without bias (Gao et al. 2022, App.).

From N samples per prompt, the expected score of the best of a uniformly random subset of n of
them (best by the proxy) is sum_i v_(i) C(i, n-1) / C(N, n), with the samples sorted by the
proxy in ascending order and i counted from 0: sample i is the proxy's best in exactly C(i, n-1)
of the C(N, n) subsets. One set of N samples thus gives the whole curve n = 1 .. N, and its KL to
the sampling policy is log n - (n - 1)/n (Stiennon et al. 2020; Gao et al. 2022).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import special

from alignjax import evaluation


def kl_best_of_n(n) -> np.ndarray:
    """KL(best-of-n || base policy) = log n - (n - 1) / n."""
    n = np.asarray(n, np.float64)
    return np.log(n) - (n - 1.0) / n


def subset_max_weights(num: int, n: int) -> np.ndarray:
    """[num] weights C(i, n-1) / C(num, n) of the proxy-sorted samples i = 0 .. num-1."""
    i = np.arange(num)
    log_w = np.full(num, -np.inf)
    ok = i >= n - 1
    log_w[ok] = (special.gammaln(i[ok] + 1) - special.gammaln(n) - special.gammaln(i[ok] - n + 2) -
                 (special.gammaln(num + 1) - special.gammaln(n + 1) - special.gammaln(num - n + 1)))
    return np.exp(log_w)


def expected_best_of_n(select, values, ns) -> np.ndarray:
    """Mean over prompts of E[value of the best of n by `select`], for each n in `ns`.

    Args:
      select: [P, N] proxy scores of N samples of each of P prompts (what picks the best).
      values: [P, N] what is measured of each sample (gold reward, or the proxy itself).
      ns: subset sizes, each in 1 .. N.
    """
    select, values = np.asarray(select, np.float64), np.asarray(values, np.float64)
    order = np.argsort(select, axis=1, kind='stable')
    ranked = np.take_along_axis(values, order, axis=1)
    num = select.shape[1]
    return np.array([float(np.mean(ranked @ subset_max_weights(num, int(n)))) for n in ns])


def sample_candidates(policy, task, tok, *, num_prompts: int, n: int, seed: int,
                      max_prompt_len: int = 8, max_new_tokens: int = 12) -> dict:
    """`n` samples (temperature 1) of `policy` for each of `num_prompts` eval prompts.

    Returns the evaluation.sample dict (row-major: prompt p's samples are rows p*n .. p*n+n-1)
    plus `prompts` (one per row) and `gold` [num_prompts, n].
    """
    prompts = task.prompts(num_prompts, seed=seed, split='eval')
    rows = [p for p in prompts for _ in range(n)]
    samples = evaluation.sample(policy, rows, tok, max_prompt_len=max_prompt_len,
                                max_new_tokens=max_new_tokens, temperature=1.0,
                                key=jax.random.key(seed + 777), batch_size=256)
    samples['prompts'] = rows
    samples['gold'] = task.gold_rewards(rows, samples['texts']).reshape(num_prompts, n)
    return samples


def member_scores(reward_model, samples, *, batch_size: int = 256) -> np.ndarray:
    """Every member's reward [rows, K] of the sampled responses."""
    graphdef, state = nnx.split(reward_model)
    score = jax.jit(lambda st, t, m: nnx.merge(graphdef, st)(t, m))
    tokens = np.concatenate([samples['prompt'], samples['tokens']], axis=1)
    mask = np.concatenate([samples['prompt_mask'], samples['mask']], axis=1)
    out = []
    for start in range(0, len(tokens), batch_size):
        t, m = tokens[start:start + batch_size], mask[start:start + batch_size]
        real = len(t)
        if real < batch_size:  # one shape, one compile
            t = np.concatenate([t, np.repeat(t[-1:], batch_size - real, 0)])
            m = np.concatenate([m, np.repeat(m[-1:], batch_size - real, 0)])
        r = np.asarray(jax.device_get(score(state, jnp.asarray(t), jnp.asarray(m))))
        out.append(r.reshape(batch_size, -1)[:real])
    return np.concatenate(out).astype(np.float64)


def aggregate(members: np.ndarray, method: str, lam: float = 1.0) -> np.ndarray:
    """NumPy twin of losses.reward.aggregate_ensemble on [rows, K] member rewards."""
    if method == 'mean':
        return members.mean(1)
    if method == 'min':
        return members.min(1)
    if method == 'mean_minus_std':
        return members.mean(1) - lam * members.std(1)
    raise ValueError(f'unknown aggregation {method!r}')


def powers_of_two(n_max: int) -> list[int]:
    out, n = [], 1
    while n <= n_max:
        out.append(n)
        n *= 2
    return out
