"""Tests for alignjax.sampling: the KV-cache sampler vs teacher forcing, EOS, mixtures, compiles.

Every sampler log-prob is checked against an independent teacher-forced forward over the sampled
tokens (`scoring.response_logprobs` for the policy, `sampling.process_logits` applied to the
teacher-forced logits for the distribution actually sampled from).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignjax import sampling
from alignjax.models import PRESETS, Decoder, response_logprobs, sequence_logits
from alignjax.models.layers import NEG_INF
from alignjax.sampling import SamplingConfig

CFG = PRESETS['tiny']
V = CFG.vocab_size
N = 12  # new tokens
NO_EOS = -1  # an eos_id that is never sampled: every row runs to N tokens
KEY = jax.random.key(42)

SAMPLERS = {
    'greedy': SamplingConfig(max_new_tokens=N, greedy=True, eos_id=NO_EOS),
    'temperature': SamplingConfig(max_new_tokens=N, temperature=0.7, eos_id=NO_EOS),
    'top_k_top_p': SamplingConfig(max_new_tokens=N, temperature=1.1, top_k=10, top_p=0.9,
                                  eos_id=NO_EOS),
}


def make_model(seed):
    """A tiny decoder whose embedding is scaled up so that next-token distributions are peaked
    (the default init is near-uniform, where greedy ties would make comparisons fragile)."""
    model = Decoder(CFG, rngs=nnx.Rngs(seed))
    emb = model.embedding[...]
    model.embedding.value = emb * (0.3 / jnp.std(emb))
    return model


def make_prompts(lengths=(9, 5, 7, 3), width=9, seed=0):
    rng = np.random.RandomState(seed)
    prompt = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros_like(prompt)
    for b, n in enumerate(lengths):
        prompt[b, width - n:] = rng.randint(3, V, n)
        mask[b, width - n:] = 1
    return prompt, mask


@functools.partial(jax.jit, static_argnums=0)
def _teacher(graphdef, state, prompt, prompt_mask, response, response_mask):
    model = nnx.merge(graphdef, state)
    logits = sequence_logits(model, prompt, prompt_mask, response, response_mask)
    logp = response_logprobs(model, prompt, prompt_mask, response, response_mask)
    return logits, logp


def teacher(model, prompt, prompt_mask, out):
    """Teacher-forced (logits [B, N, V], policy log-probs [B, N]) of the sampled response."""
    logits, logp = _teacher(*nnx.split(model), prompt, prompt_mask, out['tokens'], out['mask'])
    return np.asarray(logits), np.asarray(logp)


_processed = jax.jit(sampling.process_logits, static_argnames=('temperature', 'top_k', 'top_p'))


def processed_logprobs(logits, tokens, mask, config):
    """Log-probs of `tokens` under the processed (temperature / top-k / top-p) distribution."""
    lp = np.asarray(
        _processed(jnp.asarray(logits), temperature=config.temperature, top_k=config.top_k,
                   top_p=config.top_p))
    return np.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0] * mask


def to_numpy(out):
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope='module')
def policy():
    return make_model(0)


@pytest.fixture(scope='module')
def reference():
    return make_model(1)


@pytest.fixture(scope='module')
def prompts():
    return make_prompts()


@pytest.fixture(scope='module')
def sample(policy, prompts):
    """sample(name) -> the policy's output under SAMPLERS[name], computed once per module."""
    results = {}

    def run(name):
        if name not in results:
            results[name] = to_numpy(sampling.generate(policy, *prompts, KEY, SAMPLERS[name]))
        return results[name]

    return run


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def ref_process_logits(logits, temperature, top_k, top_p):
    """NumPy: temperature, then keep the top_k largest, then the smallest set of the largest
    whose mass reaches top_p (a token is kept if the mass strictly above it is < top_p)."""
    z = logits / temperature
    order = np.argsort(-z)
    keep = np.ones_like(z, bool)
    if top_k:
        keep[order[top_k:]] = False
    if top_p < 1.0:
        zk = np.where(keep, z, -np.inf)
        p = np.exp(zk - zk.max())
        p /= p.sum()
        above = 0.0
        for i in order:
            keep[i] &= above < top_p
            above += p[i]
    z = np.where(keep, z, -np.inf)
    return z - z.max() - np.log(np.sum(np.exp(z - z.max())))


FILTERS = {name: c for name, c in SAMPLERS.items() if not c.greedy}
FILTERS['top_k'] = SamplingConfig(max_new_tokens=N, temperature=1.3, top_k=5)
FILTERS['top_p'] = SamplingConfig(max_new_tokens=N, top_p=0.8)


@pytest.mark.parametrize('name', list(FILTERS))
def test_process_logits_matches_numpy(name):
    """On [B, T, V] logits (teacher-forced shape; top-p once assumed [B, V]); the sampler's
    settings reuse the programs compiled here in the teacher-forcing tests below."""
    config = FILTERS[name]
    logits = 2.0 * np.random.RandomState(0).randn(4, N, V).astype(np.float32)
    got = np.asarray(
        _processed(jnp.asarray(logits), temperature=config.temperature, top_k=config.top_k,
                   top_p=config.top_p))
    sizes = []
    for b, t in np.ndindex(4, N):
        want = ref_process_logits(logits[b, t].astype(np.float64), config.temperature, config.top_k,
                                  config.top_p)
        kept = np.isfinite(want)
        np.testing.assert_array_equal(got[b, t] > -1e29, kept)
        np.testing.assert_allclose(got[b, t][kept], want[kept], rtol=1e-5, atol=1e-5)
        sizes.append(kept.sum())
    if config.top_k or config.top_p < 1.0:
        assert 1 < max(sizes) < V  # the filter is active and not degenerate


# ----------------------------------------------------------------------------- teacher forcing


@pytest.mark.parametrize('name', list(SAMPLERS))
def test_logprobs_equal_teacher_forced_forward(name, sample, policy, prompts):
    config = SAMPLERS[name]
    out = sample(name)
    assert out['tokens'].shape == out['logprobs'].shape == (4, N)
    assert out['tokens'].dtype == np.int32
    np.testing.assert_array_equal(out['mask'], 1)
    np.testing.assert_array_equal(out['lengths'], N)
    logits, logp = teacher(policy, *prompts, out)
    close(out['policy_logprobs'], logp)
    if config.greedy:
        # Step by step, the token is the argmax of the teacher-forced logits.
        np.testing.assert_array_equal(out['tokens'], logits.argmax(-1))
        close(out['logprobs'], out['policy_logprobs'])
        return
    close(out['logprobs'], processed_logprobs(logits, out['tokens'], out['mask'], config))
    # The processed distribution is not the policy's: the comparison above can tell them apart.
    assert np.abs(out['logprobs'] - out['policy_logprobs']).max() > 1e-3
    if config.top_k and config.top_p < 1.0:
        # Both filters bind somewhere: top-k cuts nuclei larger than k, top-p cuts within top k.
        kept = lambda **kw: (np.asarray(
            _processed(jnp.asarray(logits), temperature=config.temperature, **kw)) > -1e29).sum(-1)
        assert (kept(top_k=0, top_p=config.top_p) > config.top_k).any()
        assert (kept(top_k=config.top_k, top_p=config.top_p) < config.top_k).any()
    if config.top_k:
        rank = (logits > np.take_along_axis(logits, out['tokens'][..., None], -1)).sum(-1)
        assert rank.max() < config.top_k


def test_top_k_one_is_greedy(sample, policy, prompts):
    greedy = sample('greedy')
    top1 = to_numpy(
        sampling.generate(policy, *prompts, KEY,
                          SamplingConfig(max_new_tokens=N, top_k=1, eos_id=NO_EOS)))
    np.testing.assert_array_equal(top1['tokens'], greedy['tokens'])
    close(top1['policy_logprobs'], greedy['policy_logprobs'])
    close(top1['logprobs'], 0.0)  # sampled from a point mass


# ----------------------------------------------------------------------------- EOS and stopping

_iterations = []


def _count_step():
    _iterations.append(1)


def force_eos(logits):
    """A combine hook that puts all the mass on token 2 and counts decode iterations."""
    jax.debug.callback(_count_step)
    return jnp.where(jnp.arange(V) == 2, 0.0, NEG_INF) + jnp.zeros_like(logits[0])


def counting_policy(logits):
    """The policy's own logits, counting decode iterations."""
    jax.debug.callback(_count_step)
    return logits[0]


def test_all_rows_at_eos_exit_the_loop(policy, prompts):
    _iterations.clear()
    config = SamplingConfig(max_new_tokens=N, eos_id=2, pad_id=0)
    out = to_numpy(sampling.generate(policy, *prompts, KEY, config, combine=force_eos))
    jax.effects_barrier()
    assert len(_iterations) == 1  # one decode step, not N
    np.testing.assert_array_equal(out['lengths'], 1)
    np.testing.assert_array_equal(out['mask'], np.eye(1, N, dtype=np.int32).repeat(4, 0))
    np.testing.assert_array_equal(out['tokens'][:, 0], 2)
    np.testing.assert_array_equal(out['tokens'][:, 1:], 0)
    close(out['logprobs'], 0.0)  # log 1 for the forced EOS, 0 on padding
    _, logp = teacher(policy, *prompts, out)
    close(out['policy_logprobs'], logp)
    assert np.all(out['policy_logprobs'][:, 0] < -1e-3)


def test_rows_stop_independently(sample, policy, prompts):
    free = sample('temperature')['tokens']
    # Pick as EOS a sampled token that makes the rows stop at different steps.
    first = lambda c: np.array([list(r).index(c) + 1 if c in r else N for r in free])
    eos = max(np.setdiff1d(free, [0]), key=lambda c: (first(c).max() < N, len(set(first(c)))))
    stop = first(eos)
    assert len(set(stop)) >= 3

    _iterations.clear()
    config = SamplingConfig(max_new_tokens=N, temperature=0.7, eos_id=int(eos))
    out = to_numpy(sampling.generate(policy, *prompts, KEY, config, combine=counting_policy))
    jax.effects_barrier()
    assert len(_iterations) == stop.max()  # the loop ends when the last row stops
    np.testing.assert_array_equal(out['lengths'], stop)
    live = np.arange(N)[None, :] < stop[:, None]
    np.testing.assert_array_equal(out['mask'], live.astype(np.int32))
    np.testing.assert_array_equal(out['tokens'], np.where(live, free, config.pad_id))
    ref = sample('temperature')
    close(out['logprobs'], np.where(live, ref['logprobs'], 0.0))
    close(out['policy_logprobs'], np.where(live, ref['policy_logprobs'], 0.0))
    # Right-padded responses score the same under teacher forcing.
    logits, logp = teacher(policy, *prompts, out)
    close(out['policy_logprobs'], logp)
    close(out['logprobs'], processed_logprobs(logits, out['tokens'], out['mask'], config))


# ----------------------------------------------------------------------------- mixtures


def test_geometric_mixture_interpolates_between_models(sample, policy, reference, prompts):
    config = SAMPLERS['temperature']
    pi_out = sample('temperature')
    mu_out = to_numpy(sampling.generate(reference, *prompts, KEY, config))
    assert (pi_out['tokens'] != mu_out['tokens']).any()
    both = [policy, reference]
    mix = lambda m: to_numpy(
        sampling.generate(both, *prompts, KEY, config, combine=sampling.geometric_mixture(m)))
    at0, at1, half = mix(0.0), mix(1.0), mix(0.5)

    np.testing.assert_array_equal(at0['tokens'], pi_out['tokens'])
    close(at0['logprobs'], pi_out['logprobs'])
    close(at0['policy_logprobs'], pi_out['policy_logprobs'])

    np.testing.assert_array_equal(at1['tokens'], mu_out['tokens'])
    close(at1['logprobs'], mu_out['logprobs'])
    # policy_logprobs always score the first model: here pi's log-probs of mu's samples.
    _, pi_of_mu = teacher(policy, *prompts, at1)
    close(at1['policy_logprobs'], pi_of_mu)

    # m = 0.5: the sampled distribution is the normalised pi^(1/2) mu^(1/2), then tempered.
    pi_logits, pi_logp = teacher(policy, *prompts, half)
    mu_logits, _ = teacher(reference, *prompts, half)
    mixed = 0.5 * jax.nn.log_softmax(pi_logits) + 0.5 * jax.nn.log_softmax(mu_logits)
    close(half['logprobs'],
          processed_logprobs(np.asarray(mixed), half['tokens'], half['mask'], config))
    close(half['policy_logprobs'], pi_logp)
    # The library's own combine is a stable jit static: the same coefficient reuses the program.
    size = sampling._generate._cache_size()
    again = to_numpy(
        sampling.generate(both, *prompts, KEY, config, combine=sampling.geometric_mixture(0.5)))
    assert sampling._generate._cache_size() == size
    np.testing.assert_array_equal(again['tokens'], half['tokens'])


# ----------------------------------------------------------------------------- compiles, padding

BUCKETED = SamplingConfig(max_new_tokens=N, temperature=0.8, eos_id=NO_EOS, prompt_bucket=16)


def test_same_shapes_and_bucket_reuse_one_program(policy, reference):
    prompt9, mask9 = make_prompts((9, 5, 7, 3), width=9, seed=1)
    prompt5, mask5 = make_prompts((5, 2, 4, 1), width=5, seed=2)
    size = sampling._generate._cache_size
    before = size()
    first = sampling.generate(policy, prompt9, mask9, KEY, BUCKETED)
    assert size() == before + 1  # a new config compiles once ...
    sampling.generate(policy, prompt9, mask9, jax.random.key(7), BUCKETED)
    sampling.generate(reference, prompt9, mask9, KEY, BUCKETED)  # other weights, same structure
    second = sampling.generate(policy, prompt5, mask5, KEY, BUCKETED)  # 5 and 9 both bucket to 16
    jax.block_until_ready((first, second))
    assert size() == before + 1  # ... and never again for these shapes


def test_left_padding_beyond_the_bucket_changes_nothing(policy):
    prompt, mask = make_prompts((9, 5, 7, 3), width=9, seed=1)
    out = to_numpy(sampling.generate(policy, prompt, mask, KEY, BUCKETED))
    # 20 more columns of left padding (holding arbitrary ids, masked out): bucket 32, not 16.
    junk = np.random.RandomState(3).randint(0, V, (4, 20)).astype(np.int32)
    wide = np.concatenate([junk, prompt], axis=1)
    wide_mask = np.concatenate([np.zeros_like(junk), mask], axis=1)
    padded = to_numpy(sampling.generate(policy, wide, wide_mask, KEY, BUCKETED))
    np.testing.assert_array_equal(padded['tokens'], out['tokens'])
    np.testing.assert_array_equal(padded['mask'], out['mask'])
    close(padded['logprobs'], out['logprobs'])
    close(padded['policy_logprobs'], out['policy_logprobs'])


# ----------------------------------------------------------------------------- exact fast noise


@pytest.mark.parametrize('shape', [(1, 1024), (4, 7), (3, 1000)])
def test_gumbel_noise_is_jax_random_gumbel_bit_for_bit(shape):
    gumbel = jax.jit(lambda k: jax.random.gumbel(k, shape))
    ours = jax.jit(lambda k: sampling.gumbel_noise(jax.random.key_data(k), shape))
    for seed, t in [(0, 0), (42, 5), (7, 127)]:
        key = jax.random.fold_in(jax.random.key(seed), t)
        want, got = np.asarray(gumbel(key)), np.asarray(ours(key))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_first_argmax_is_argmax_with_ties_and_nans():
    x = jnp.asarray([[1., 3., 3., 2.], [np.nan, 1., np.nan, 5.], [-np.inf] * 4, [0.] * 4,
                     [NEG_INF, -2., NEG_INF, -2.]], jnp.float32)
    np.testing.assert_array_equal(sampling.first_argmax(x), jnp.argmax(x, axis=-1))


@pytest.mark.parametrize('name', ['temperature', 'top_k_top_p', 'greedy'])
def test_every_noise_mode_samples_the_same_tokens(name, policy, prompts):
    """The noise table, per-step `gumbel_noise` and jax.random.categorical agree bit for bit."""
    config = SAMPLERS[name]
    graphdef, state = nnx.split(policy)
    prompt, mask = sampling.bucket_prompts(jnp.asarray(prompts[0]), jnp.asarray(prompts[1]),
                                           config.prompt_bucket, config.pad_id)
    run = lambda mode: to_numpy(
        sampling._generate([state], prompt, mask, KEY, graphdefs=(graphdef,), config=config, combine
                           =sampling.first_model_logits, noise=mode))
    ref = run('jax')
    for mode in ('step', 'table'):
        out = run(mode)
        for k in ref:
            np.testing.assert_array_equal(out[k], ref[k], err_msg=f'{mode} {k}')
    assert sampling.noise_mode(KEY, config, 4, V) == ('step' if config.greedy else 'table')
    assert sampling.noise_mode(jax.random.key(0, impl='rbg'), config, 4, V) == 'jax'
