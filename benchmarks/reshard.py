"""Generation sharding: reshard time and rollout throughput of each choice, in one process.

    python benchmarks/reshard.py [--preset small --batch 32 --prompt_len 32 --new_tokens 64]
        [--train_mesh 1,-1,1 --choices train,replicated,tensor]

The policy lives in the training sharding (default FSDP over every device, as the update wants
it). For each choice of `config.rl.generation_sharding` the script times the explicit reshard
(`resharding.GenerationSharding.reshard`: one `jax.device_put` per parameter, blocked until done)
and the jitted KV-cache sampler on the resharded weights (prompts split over the generation
mesh's batch axes; `eos_id=-1` so every row decodes exactly `new_tokens` tokens). 'train' samples
in the training sharding with no reshard. Every choice must sample the same tokens (checked).

Reported per choice (medians over --repeats timed calls after a warm-up): reshard_s,
sample_tokens_per_s (sampling alone) and rollout_tokens_per_s (reshard plus sampling: what one
rollout pays). On CPU the script simulates --devices devices. The last line printed is one JSON
object: {"device", "devices", "preset", "param_bytes", "batch", "prompt_len", "new_tokens",
"train_mesh", "choices": {name: {"mesh", "reshard_s", "sample_tokens_per_s",
"rollout_tokens_per_s"}}}.

Measured on the shared 2-core CPU (8 simulated devices, preset small, defaults, --repeats 5):
reshard 56 ms (replicated) and 15 ms (tensor); sampling 1042 (train), 972 (replicated) and
2625 (tensor) tokens/s. An earlier run under heavier load gave 1359 / 961 / 651 tokens/s: on
simulated devices sharing two cores the ranking of the choices is noise; rank them on an
accelerator, where FSDP's per-token weight gathers are real traffic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--preset', default='small')
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--prompt_len', type=int, default=32)
    p.add_argument('--new_tokens', type=int, default=64)
    p.add_argument('--train_mesh', default='1,-1,1', help='(data, fsdp, tensor) of the update')
    p.add_argument(
        '--choices', default='train,replicated,tensor',
        help="generation shardings to compare ('train', 'replicated', 'tensor', 'D,F,T')")
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--devices', type=int, default=8, help='simulated CPU devices (CPU only)')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
        os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                                   + f' --xla_force_host_platform_device_count={args.devices}')
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from alignjax import resharding, sampling, sharding  # pylint: disable=g-import-not-at-top
    from alignjax.models import Decoder, get_model_config  # pylint: disable=g-import-not-at-top

    cfg = get_model_config(args.preset)
    train_mesh = sharding.make_mesh(tuple(int(x) for x in args.train_mesh.split(',')))
    policy = sharding.create_sharded(lambda: Decoder(cfg, rngs=nnx.Rngs(args.seed)), train_mesh)
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(policy)))
    rng = np.random.RandomState(args.seed)
    b, p, n = args.batch, args.prompt_len, args.new_tokens
    prompt = rng.randint(3, cfg.vocab_size, (b, p)).astype(np.int32)
    prompt_mask = (np.arange(p)[None] >= rng.randint(0, p // 2, (b, 1))).astype(np.int32)
    prompt = prompt * prompt_mask
    config = sampling.SamplingConfig(max_new_tokens=n, eos_id=-1, prompt_bucket=p)
    print(
        f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, preset {args.preset} '
        f'({param_bytes / 2**20:.1f} MiB of params), train mesh {dict(train_mesh.shape)}, '
        f'batch {b}, prompt {p}, new tokens {n}, repeats {args.repeats}', flush=True)

    def sample(model, mesh):
        key = jax.device_put(jax.random.key(args.seed), sharding.replicated(mesh))
        with jax.set_mesh(mesh):
            ids = sharding.shard_batch({'p': prompt, 'm': prompt_mask}, mesh)
            out = sampling.generate(model, ids['p'], ids['m'], key, config)
            return jax.block_until_ready(out['tokens'])

    results, reference_tokens = {}, None
    for choice in args.choices.split(','):
        generation = resharding.GenerationSharding.from_spec(choice, train_mesh)
        mesh = train_mesh if generation is None else generation.mesh
        reshard_times, sample_times = [], []
        for i in range(args.repeats + 1):  # call 0 compiles (and warms the device_put path)
            model, seconds = (policy, 0.0) if generation is None else generation.reshard(policy)
            start = time.perf_counter()
            tokens = sample(model, mesh)
            elapsed = time.perf_counter() - start
            del model
            if i:
                reshard_times.append(seconds)
                sample_times.append(elapsed)
        tokens = np.asarray(jax.device_get(tokens))
        if reference_tokens is None:
            reference_tokens = tokens
        same = bool(np.array_equal(tokens, reference_tokens))
        reshard_s = statistics.median(reshard_times)
        sample_s = statistics.median(sample_times)
        results[choice] = {
            'mesh': list(mesh.devices.shape),
            'reshard_s': round(reshard_s, 5),
            'sample_tokens_per_s': round(b * n / sample_s, 1),
            'rollout_tokens_per_s': round(b * n / (reshard_s + sample_s), 1),
        }
        print(
            f'{choice:>10}: mesh {dict(mesh.shape)}, reshard {reshard_s * 1e3:.2f} ms, '
            f'sampling {b * n / sample_s:.0f} tok/s, with reshard '
            f'{b * n / (reshard_s + sample_s):.0f} tok/s, tokens as the first choice: {same}',
            flush=True)
        if not same:
            raise SystemExit(f'{choice}: sampled other tokens than {args.choices.split(",")[0]}')
    print(
        json.dumps({
            'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
            'preset': args.preset, 'param_bytes': int(param_bytes), 'batch': b, 'prompt_len': p,
            'new_tokens': n, 'train_mesh': list(train_mesh.devices.shape), 'choices': results
        }))


if __name__ == '__main__':
    main()
