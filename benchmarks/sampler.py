"""KV-cache sampler throughput against a no-cache baseline, in one process.

    python benchmarks/sampler.py [--preset small --batch 8 --prompt_len 32 --new_tokens 128]

The cached sampler is `alignjax.sampling.generate` (one prefill, then one token per step against
the KV cache). The baseline, defined here, samples the same way but recomputes the full forward
over a fixed [batch, prompt_len + new_tokens] buffer at every step (it compiles once; positions
not yet written are masked out). Both draw token t with `fold_in(key, t)` from the same tempered
distribution, so on the same weights they sample the same tokens, which the script checks.

Reported: tokens per second of each (median over --repeats / --baseline_repeats timed calls
after a warm-up call, all `jax.block_until_ready`), the speedup, the cached sampler's compile time
(first call minus the steady-state median) and the parameter bytes. The last line printed is one
JSON object with keys cached_tokens_per_s, uncached_tokens_per_s, speedup, compile_s, param_bytes.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import sampling
from alignjax.models import Decoder, get_model_config


@functools.partial(jax.jit, static_argnames=('graphdef', 'new_tokens', 'temperature'))
def uncached_generate(state, prompt, prompt_mask, key, *, graphdef, new_tokens, temperature):
    """Tokens [B, new_tokens] sampled by re-running the whole forward at every step."""
    model = nnx.merge(graphdef, state)
    b, p = prompt.shape
    tokens = jnp.concatenate([prompt, jnp.zeros((b, new_tokens), jnp.int32)], axis=1)
    mask = jnp.concatenate([prompt_mask, jnp.zeros((b, new_tokens), jnp.int32)], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    positions = positions.at[:, p:].set(positions[:, p - 1:p] + 1 + jnp.arange(new_tokens))

    def step(t, carry):
        tokens, mask = carry
        h, _ = model.hidden(tokens, positions=positions, kv_mask=mask)
        last = jax.lax.dynamic_slice_in_dim(h, p + t - 1, 1, axis=1)
        logp = sampling.process_logits(model.logits(last)[:, 0], temperature=temperature)
        tok = jax.random.categorical(jax.random.fold_in(key, t), logp).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, p + t))
        mask = jax.lax.dynamic_update_slice(mask, jnp.ones((b, 1), jnp.int32), (0, p + t))
        return tokens, mask

    tokens, _ = jax.lax.fori_loop(0, new_tokens, step, (tokens, mask))
    return tokens[:, p:]


def timed(fn, repeats):
    """(first call seconds, median of `repeats` further calls, last result)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--preset', default='small')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--prompt_len', type=int, default=32)
    parser.add_argument('--new_tokens', type=int, default=128)
    parser.add_argument('--temperature', type=float, default=1.0)
    parser.add_argument('--repeats', type=int, default=5, help='timed calls of the cached sampler')
    parser.add_argument('--baseline_repeats', type=int, default=3,
                        help='timed calls of the (slow) no-cache baseline')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    cfg = get_model_config(args.preset)
    ctor = lambda: Decoder(cfg, rngs=nnx.Rngs(args.seed))
    graphdef, _ = nnx.split(nnx.eval_shape(ctor))
    state = jax.block_until_ready(jax.jit(lambda: nnx.state(ctor()))())
    model = nnx.merge(graphdef, state)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

    rng = np.random.RandomState(args.seed)
    b, p, n = args.batch, args.prompt_len, args.new_tokens
    prompt = rng.randint(3, cfg.vocab_size, (b, p)).astype(np.int32)
    prompt_mask = (np.arange(p)[None] >= rng.randint(0, p // 2, (b, 1))).astype(np.int32)
    prompt, prompt_mask = jnp.asarray(prompt * prompt_mask), jnp.asarray(prompt_mask)
    key = jax.random.key(args.seed)
    # eos_id -1: no row stops early, so both samplers produce exactly batch * new_tokens tokens.
    config = sampling.SamplingConfig(max_new_tokens=n, temperature=args.temperature, eos_id=-1,
                                     prompt_bucket=p)

    print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, preset {args.preset} '
          f'({cfg.num_params() / 1e6:.2f}M params, {param_bytes / 2**20:.1f} MiB), batch {b}, '
          f'prompt {p}, new tokens {n}, temperature {args.temperature}, '
          f'repeats {args.repeats} / {args.baseline_repeats}')

    cached = lambda: sampling.generate(model, prompt, prompt_mask, key, config)['tokens']
    first, cached_s, cached_tokens = timed(cached, args.repeats)
    compile_s = first - cached_s
    print(f'cached sampler:   first call {first:.3f} s, steady state {cached_s:.4f} s '
          f'(compile ~{compile_s:.3f} s)')

    uncached = functools.partial(uncached_generate, state, prompt, prompt_mask, key,
                                 graphdef=graphdef, new_tokens=n, temperature=args.temperature)
    first_u, uncached_s, uncached_tokens = timed(uncached, args.baseline_repeats)
    print(f'uncached sampler: first call {first_u:.3f} s, steady state {uncached_s:.4f} s')

    agree = float(np.mean(np.asarray(cached_tokens) == np.asarray(uncached_tokens)))
    print(f'tokens equal between the two samplers: {agree:.1%}')

    cached_tps = b * n / cached_s
    uncached_tps = b * n / uncached_s
    result = {
        'cached_tokens_per_s': round(cached_tps, 1),
        'uncached_tokens_per_s': round(uncached_tps, 1),
        'speedup': round(cached_tps / uncached_tps, 2),
        'compile_s': round(compile_s, 3),
        'param_bytes': int(param_bytes),
    }
    print(f'cached {cached_tps:.0f} tok/s, uncached {uncached_tps:.0f} tok/s, '
          f'speedup {cached_tps / uncached_tps:.1f}x')
    print(json.dumps(result))


if __name__ == '__main__':
    main()
