"""The `sample` workload side by side with transformers' `generate` and Tunix's `Sampler`.

    PYTHONPATH=. python benchmarks/sample.py --size=small [--peers=hf,tunix]

Batch 1 and batch 16, 32-token prompts, 128 new tokens, temperature 1.0, KV cache, EOS disabled so
that every row produces 128 tokens. The alignjax call is `alignjax.sampling.generate` (one prefill,
a `lax.while_loop` decode), blocked on the tokens.

Reported per batch size: warm-up (first call: compilation) apart, the median of --calls calls
repeated twice, tokens/s, and against the limits measured in the same run: the bytes a decode step
must read (every matmul weight, one embedding row a row and the KV cache so far) per second as a
fraction of the memory read bandwidth (the roofline of batch 1), and model FLOP/s as a fraction of
the matmul peak; then the peers' figures and the ratio alignjax / peer tokens/s. On a GPU
(`--size=1b`) the same figures give decode throughput against the HBM roofline. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

common.set_threads(2)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from alignjax import sampling  # pylint: disable=g-import-not-at-top,wrong-import-position
from alignjax.models import Decoder, lora, transformer  # pylint: disable=g-import-not-at-top,wrong-import-position


def measure(model, cfg, args, batch: int, hw: dict) -> dict:
    p, n = args.prompt_len, args.new_tokens
    rng = np.random.default_rng(args.seed)
    prompt = jnp.asarray(rng.integers(4, cfg.vocab_size, (batch, p)), jnp.int32)
    mask = jnp.ones((batch, p), jnp.int32)
    config = sampling.SamplingConfig(max_new_tokens=n, temperature=1.0, eos_id=-1, prompt_bucket=p)
    keys = iter(jax.random.split(jax.random.key(args.seed), 1 + args.calls * args.repeats))
    call = lambda: sampling.generate(model, prompt, mask, next(keys), config)['tokens']
    t = common.timed_steps(call, steps=args.calls, repeats=args.repeats, sync=jax.block_until_ready)
    s = t['median_s']
    # Decode reads the weights once per step; the prefill is one more pass over them.
    nbytes = sum(common.decode_bytes_per_step(cfg, batch, p + i) for i in range(n))
    nbytes += common.decode_bytes_per_step(cfg, batch, 0)
    flops = common.forward_flops(cfg, batch * p, (p + 1) / 2, head_tokens=batch)
    flops += sum(common.forward_flops(cfg, batch, p + i + 1) for i in range(n))
    weights = common.decode_bytes_per_step(cfg, 1, 0)
    roofline = hw['read_bandwidth_bytes_per_s'] / weights * batch  # tokens/s, weights only
    return {
        'ms_per_call': round(1e3 * s, 3), 'warmup_s': t['warmup_s'],
        'round_medians_ms': [round(1e3 * m, 3) for m in t['round_medians_s']
                            ], 'tokens_per_s': round(batch * n / s,
                                                     1), 'ms_per_token_step': round(1e3 * s / n, 4),
        'bytes_per_call': nbytes, 'bytes_per_s': round(nbytes / s, 1),
        'fraction_of_bandwidth': round(nbytes / s / hw['read_bandwidth_bytes_per_s'],
                                       4), 'weight_roofline_tokens_per_s': round(roofline, 1),
        'fraction_of_weight_roofline': round(batch * n / s / roofline, 4),
        'model_flops_per_call': flops, 'flops_per_s': round(flops / s, 1),
        'fraction_of_matmul_peak': round(flops / s / hw['matmul_peak_flops'], 4)
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', default='small', choices=sorted(common.WORKLOADS))
    parser.add_argument('--batches', type=int, nargs='+', default=(1, 16))
    parser.add_argument('--prompt_len', type=int, default=32)
    parser.add_argument('--new_tokens', type=int, default=128)
    parser.add_argument('--calls', type=int, default=5, help='timed calls per round')
    parser.add_argument('--repeats', type=int, default=2, help='rounds of --calls calls')
    parser.add_argument('--peers', default='hf,tunix', help="comma-separated; '' for none")
    parser.add_argument('--lora', type=int, default=0,
                        help='also an adapted model of this rank, unmerged against merged')
    parser.add_argument('--hf_python', default=common.default_python('trl'))
    parser.add_argument('--tunix_python', default=common.default_python('tunix'))
    common.add_shared_flags(parser)
    args = parser.parse_args(argv)

    cfg = common.model_config(args.size, args.layers)
    load_before = common.load_average()
    hw = common.hardware_limit(size=args.limit_size, bandwidth_mib=args.limit_mib)
    common.log(f'{hw["device"]}; load average {load_before}; matmul peak '
               f'{hw["matmul_peak_flops"] / 1e9:.1f} GFLOP/s, read bandwidth '
               f'{hw["read_bandwidth_bytes_per_s"] / 1e9:.1f} GB/s')
    model = Decoder(cfg, rngs=nnx.Rngs(args.seed))
    common.log(f'sample {args.size}: {cfg.num_params() / 1e6:.2f}M params, batches '
               f'{list(args.batches)}, prompt {args.prompt_len}, {args.new_tokens} new tokens')
    ours = {}
    for b in args.batches:
        ours[f'batch_{b}'] = measure(model, cfg, args, b, hw)
        common.log(f'alignjax batch {b}: {ours[f"batch_{b}"]["tokens_per_s"]:.0f} tokens/s')

    adapters = {}
    if args.lora:  # the sampler on an adapted model, unmerged (as training runs it) and merged
        adapted = Decoder(cfg.replace(lora_rank=args.lora), rngs=nnx.Rngs(args.seed))
        state = nnx.state(adapted, lora.LoRAParam)
        keys = iter(jax.random.split(jax.random.key(args.seed + 1), 256))
        nnx.update(adapted,
                   jax.tree.map(lambda x: 0.1 * jax.random.normal(next(keys), x.shape), state))
        merged = transformer.merged_model(adapted)
        for b in args.batches:
            un, me = (measure(m, cfg, args, b, hw) for m in (adapted, merged))
            adapters[f'batch_{b}'] = {
                'unmerged_tokens_per_s': un['tokens_per_s'],
                'merged_tokens_per_s': me['tokens_per_s'],
                'unmerged_over_merged': round(un['tokens_per_s'] / me['tokens_per_s'], 3),
                'unmerged_over_base': round(un['tokens_per_s'] / ours[f'batch_{b}']['tokens_per_s'],
                                            3)
            }
            common.log(f'rank-{args.lora} adapters batch {b}: {adapters[f"batch_{b}"]}')

    spec = dict(model=common.workload_spec(args.size), batches=list(args.batches),
                prompt_len=args.prompt_len, new_tokens=args.new_tokens, calls=args.calls,
                repeats=args.repeats, threads=2, seed=args.seed)
    peers = {}
    for peer in filter(None, args.peers.split(',')):
        common.log(f'running {peer} ...')
        if peer == 'hf':
            peers['hf'] = common.run_peer('hf_generate.py', args.hf_python, spec)
        elif peer == 'tunix':
            peers['tunix'] = common.run_peer('tunix_sampler.py', args.tunix_python, spec)
        else:
            raise ValueError(f'unknown peer {peer!r}')

    rows, speedups = [], {}
    for key, r in ours.items():
        rows.append([
            f'alignjax {key}', r['ms_per_call'], r['warmup_s'], r['tokens_per_s'],
            r['fraction_of_weight_roofline'], None
        ])
        for name, pr in peers.items():
            fig = pr.get(key)
            if fig:
                ratio = round(r['tokens_per_s'] / fig['tokens_per_s'], 2)
                speedups.setdefault(key, {})[name] = ratio
                rows.append([
                    f'  {name} {key}',
                    round(1e3 * fig['median_s'], 3), fig['warmup_s'], fig['tokens_per_s'], None,
                    speedups[key][name]
                ])
            else:
                rows.append([f'  {name} {key}', None, None, None, None, pr.get('error', '')[:80]])
    common.log(
        common.table(rows,
                     ['', 'ms/call', 'warm-up s', 'tokens/s', 'of roofline', 'alignjax/peer']))
    first = ours[f'batch_{args.batches[0]}']
    result = {
        'workload': 'sample', 'size': args.size, 'params': cfg.num_params(),
        'prompt_len': args.prompt_len, 'new_tokens': args.new_tokens,
        'ms_per_call': first['ms_per_call'], 'tokens_per_s': first['tokens_per_s'],
        'warmup_s': first['warmup_s'], **ours, 'peers': peers, 'speedup_vs_peers': speedups,
        'adapters': adapters, 'hardware': hw, 'jax': jax.__version__,
        'load_average_before': load_before, 'load_average_after': common.load_average()
    }
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
