"""Goodness of fit: the sampler's geometric mixture draws from softmax((1-m) lp_pi + m lp_mu).

Nash-MD's opponent is sampled from the normalised geometric mixture pi^(1-m) mu^m of policy and
reference. tests/test_sampling.py checks that the sampler *reports* the mixture's log-probs; this
test checks that the tokens it *draws* follow that distribution: 4096 rows of one prompt, one new
token each at temperature 1, against the analytic mixture of the two models' next-token logits
(a teacher-forced forward, independent of the KV-cache sampler), by a chi-square test. The same
statistic rejects the pure policy distribution, so the test can fail.

Measured (seeded, deterministic; vocabulary 32, bins with expected count < 5 pooled, 15 bins):
p = 0.81 against the mixture (0.18 to 0.81 over keys 0-4); against the pure policy, the arithmetic
mixture (1-m) pi + m mu and the geometric mixture with m = 0.5, whose expected chi-square excesses
are about 1670, 570 and 680, p < 1e-30.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import stats

from alignjax import sampling
from alignjax.models import Decoder, get_model_config

CFG = get_model_config('tiny', vocab_size=32)
M = 0.3  # the mixture coefficient
ROWS = 4096
PROMPT = np.array([[5, 17, 9, 23, 4, 11]], np.int32)


def make_model(seed):
    """A tiny decoder with its (tied) embedding scaled up: logits of standard deviation ~2, so
    that the next-token distributions are far from uniform and far from each other."""
    model = Decoder(CFG, rngs=nnx.Rngs(seed))
    emb = model.embedding[...]
    model.embedding.value = emb * (0.3 / jnp.std(emb))
    return model


def next_token_logprobs(model):
    """float64 log-probs [V] of the first response token, by a plain forward over the prompt."""
    logits = model(jnp.asarray(PROMPT), jnp.ones_like(PROMPT))[0, -1]
    return np.asarray(jax.nn.log_softmax(logits), np.float64)


def pooled_chisquare(counts, probs):
    """Chi-square test of counts against probs; bins with expected count < 5 are pooled into one
    (merged with the next smallest bin while that pool is still below 5)."""
    expected = probs / probs.sum() * counts.sum()
    order = np.argsort(expected)
    k = 0
    while k < len(order) and expected[order[k]] < 5:
        k += 1
    if 0 < k and expected[order[:k]].sum() < 5:
        k += 1
    keep = order[k:]
    obs = np.append(counts[keep], counts[order[:k]].sum()) if k else counts[keep]
    exp = np.append(expected[keep], expected[order[:k]].sum()) if k else expected[keep]
    return stats.chisquare(obs, exp).pvalue, len(obs)


def test_geometric_mixture_samples_follow_the_analytic_mixture():
    policy, reference = make_model(0), make_model(1)
    lp_pi, lp_mu = next_token_logprobs(policy), next_token_logprobs(reference)
    mixture = np.exp((1 - M) * lp_pi + M * lp_mu)
    mixture /= mixture.sum()
    policy_probs = np.exp(lp_pi)
    # The two models disagree (the test has power): total variation between policy and mixture.
    assert 0.5 * np.abs(mixture - policy_probs).sum() > 0.05

    config = sampling.SamplingConfig(max_new_tokens=1, temperature=1.0, eos_id=-1)
    out = sampling.generate([policy, reference], np.repeat(PROMPT, ROWS, 0),
                            np.ones((ROWS, PROMPT.shape[1]), np.int32), jax.random.key(0), config,
                            combine=sampling.geometric_mixture(M))
    tokens = np.asarray(out['tokens'])[:, 0]
    # The sampler's own log-probs of the drawn tokens are the analytic mixture's.
    np.testing.assert_allclose(
        np.asarray(out['logprobs'])[:, 0], np.log(mixture[tokens]), atol=1e-4)
    counts = np.bincount(tokens, minlength=CFG.vocab_size)

    p_mixture, bins = pooled_chisquare(counts, mixture)
    assert bins >= 5
    assert p_mixture > 1e-3, p_mixture
    # The same test rejects the pure policy, the arithmetic mixture and a wrong coefficient.
    arithmetic = (1 - M) * policy_probs + M * np.exp(lp_mu)
    half = np.exp(0.5 * lp_pi + 0.5 * lp_mu)
    for name, probs in (('policy', policy_probs), ('arithmetic', arithmetic), ('m=0.5', half)):
        p_value, _ = pooled_chisquare(counts, probs)
        assert p_value < 1e-6, (name, p_value)
