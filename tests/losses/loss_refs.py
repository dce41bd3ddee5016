"""NumPy helpers shared by the offline losses' tests: log-sum-exp references, seeded log-prob
sums with large magnitudes, and the comparison they use."""

import numpy as np

RTOL = 1e-5
ATOL = 1e-5
B, K = 16, 3  # one batch shape throughout: eager ops compile once per shape


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_sigmoid(x):
    return np.exp(np_log_sigmoid(x))


def logps(seed, b=B, scale=30.0):
    """Four [B] arrays of log-prob sums: small and large (|h| up to ~100 at beta = 1) magnitudes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(4):
        x = -rng.uniform(0.0, scale, size=b)
        x[:b // 4] *= 4.0  # a quarter of the pairs with log-probs in the hundreds
        out.append(x.astype(np.float32))
    return out


def close(actual, expected, rtol=RTOL, atol=ATOL):
    actual = np.asarray(actual, np.float64)
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
