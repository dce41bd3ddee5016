"""The `dpo` workload side by side with TRL's DPOTrainer and Tunix's DpoTrainer.

    PYTHONPATH=. python benchmarks/dpo.py --size=small [--peers=trl,tunix]

One step: 8 preference pairs, a 64-token prompt and 64-token chosen and rejected responses,
AdamW at 1e-6 (no weight decay, no clipping, constant rate), beta 0.1, sigmoid loss, the
reference a frozen copy evaluated every step; the precomputed-reference variant is timed apart.
The alignjax step is what `loop.train` runs for DPO: the batch put on the mesh, the jitted donated
update (`loop.setup`; the frozen reference evaluated inside it, or its log-probs looked up from
the precomputed cache), the model re-bound to the new parameters, blocked on the loss.

Reported: warm-up (the first step: compilation) apart from the steady state, the median of
--steps steps repeated twice; tokens/s (2 x pairs x 128 sequence tokens a step); model FLOP/s
(forward + backward of the policy, forward of the reference, attention included, the output head
over response positions only) as a fraction of the dense float32 matmul peak measured in the same
run, and the FLOPs alignjax executes (chosen and rejected share one pass over their prompt) as
another fraction; and the peers' figures with the ratio peer / alignjax. `--size=1b --mode=sft` (GPU) gives the
MFU of the SFT update of a Llama-3.2-1B-shaped bfloat16 model. The last line is one JSON object.
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
import ml_collections  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position

from alignjax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from alignjax.models import Decoder  # pylint: disable=g-import-not-at-top,wrong-import-position
from alignjax.trainers import dpo, loop, sft  # pylint: disable=g-import-not-at-top


def make_config(args) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1 + args.steps * args.repeats
    c.optim = dict(lr=1e-6, schedule='constant', warmup_steps=0, end_lr_factor=1.0,
                   weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=0.0, microbatches=1)
    c.loss = dict(types=('sigmoid',), weights=(), beta=0.1, label_smoothing=0.0, gamma=0.0,
                  rpo_alpha=0.0, reference_free=False, length_normalize=False, precompute_ref=False)
    return c


def make_batches(cfg, args, count: int = 4) -> list[dict]:
    """`count` host batches of random tokens (ids >= 4: no pad/BOS/EOS), all positions real."""
    rng = np.random.default_rng(args.seed)
    n, p, r = args.pairs, args.prompt_len, args.response_len
    ids = lambda *shape: rng.integers(4, cfg.vocab_size, shape).astype(np.int32)
    ones = lambda *shape: np.ones(shape, np.int32)
    out = []
    for i in range(count):
        out.append({
            'prompt': ids(n, p), 'prompt_mask': ones(n, p), 'chosen': ids(n, r),
            'chosen_mask': ones(n, r), 'rejected': ids(n, r), 'rejected_mask': ones(n, r),
            'index': np.arange(i * n, (i + 1) * n, dtype=np.int32)
        })
    return out


class Step:
    """One training step of `mode` ('dpo', 'dpo_precomputed' or 'sft'), as `loop.train` runs it."""
    def __init__(self, cfg, args, mode: str):
        self.mesh = sharding.make_mesh((1, -1, 1))
        config = make_config(args)
        ctor = lambda: Decoder(cfg, rngs=nnx.Rngs(config.seed))
        with jax.set_mesh(self.mesh):
            policy = sharding.create_sharded(ctor, self.mesh)
            frozen = {}
            if mode == 'sft':
                loss_fn = sft.sft_loss_fn
            else:
                reference = sharding.create_sharded(ctor, self.mesh)
                if mode == 'dpo':
                    frozen = {'reference': reference}
                else:
                    self.ref = dpo.ReferenceLogps(reference, self.mesh)
                loss_fn = dpo.make_loss_fn(config.loss)
            algo = loop.Algorithm(model=policy, loss_fn=loss_fn, batches=None, frozen=frozen)
            run = loop.setup(config, algo, self.mesh)
        self.graphdef, self.state, self.frozen, self.update = (run.graphdef, run.state,
                                                               run.frozen_states, run.update)
        self.batches = make_batches(cfg, args)
        if mode == 'sft':
            self.batches = [{
                'prompt': b['prompt'], 'prompt_mask': b['prompt_mask'],
                'response': np.concatenate([b['chosen'], b['rejected']]),
                'response_mask': np.concatenate([b['chosen_mask'], b['rejected_mask']])
            } for b in self.batches]
            self.batches = [
                dict(b, prompt=np.concatenate([b['prompt']] * 2),
                     prompt_mask=np.concatenate([b['prompt_mask']] * 2)) for b in self.batches
            ]
        elif mode == 'dpo_precomputed':
            total = len(self.batches) * args.pairs
            self.ref.precompute([(b, args.pairs) for b in self.batches], total)
        self.mode = mode
        self.i = 0
        self.params = sum(x.size for x in jax.tree.leaves(self.state['params']))

    def __call__(self):
        host = self.batches[self.i % len(self.batches)]
        self.i += 1
        with jax.set_mesh(self.mesh):
            batch = self.ref(host) if self.mode == 'dpo_precomputed' else host
            batch = sharding.shard_batch(batch, self.mesh)
            self.state, metrics, finite = self.update(self.state, self.frozen, batch)
            nnx.merge(self.graphdef, self.state['params'])  # the loop re-binds its model
        return metrics['loss']


def measure(cfg, args, mode: str, hw: dict) -> dict:
    step = Step(cfg, args, mode)
    t = common.timed_steps(step, steps=args.steps, repeats=args.repeats, sync=jax.block_until_ready)
    rows = 2 * args.pairs
    flops = common.sequence_flops(cfg, rows, args.prompt_len, args.response_len, train=True)
    if mode == 'dpo':
        flops += common.sequence_flops(cfg, rows, args.prompt_len, args.response_len, train=False)
    # What runs: chosen and rejected share one pass over their prompt (model FLOPs count it
    # twice, as every library's plain forward does).
    executed = 0.0
    if mode != 'sft':
        grouped = lambda train: common.grouped_sequence_flops(cfg, args.pairs, 2, args.prompt_len,
                                                              args.response_len, train=train)
        executed = grouped(True) + (grouped(False) if mode == 'dpo' else 0.0)
    # Weight and optimizer-state traffic a step cannot avoid: params read by the forward and the
    # backward, gradients written, AdamW reading p, g, m, v and writing p, m, v (10 passes), the
    # reference read once when it is evaluated.
    pbytes = common.param_bytes(cfg)
    nbytes = pbytes * (10 + (1 if mode == 'dpo' else 0))
    s = t['median_s']
    out = {
        'ms_per_step': round(1e3 * s, 3), 'warmup_s': t['warmup_s'],
        'round_medians_ms': [round(1e3 * m, 3) for m in t['round_medians_s']],
        'tokens_per_s': round(rows * (args.prompt_len + args.response_len) / s,
                              1), 'model_flops_per_step': flops, 'flops_per_s': round(flops / s, 1),
        'fraction_of_matmul_peak': round(flops / s / hw['matmul_peak_flops'], 4),
        'executed_flops_per_step': executed or flops, 'executed_fraction_of_matmul_peak': round(
            (executed or flops) / s / hw['matmul_peak_flops'],
            4), 'bytes_per_step': nbytes, 'bytes_per_s': round(nbytes / s, 1),
        'fraction_of_bandwidth': round(nbytes / s / hw['read_bandwidth_bytes_per_s'], 4)
    }
    if jax.default_backend() != 'cpu' and hw.get('jax_matmul_bf16_flops'):
        out['fraction_of_bf16_matmul_peak'] = round(flops / s / hw['jax_matmul_bf16_flops'], 4)
    return out


def peer_figures(args) -> dict:
    spec = dict(model=common.workload_spec(args.size), pairs=args.pairs, prompt_len=args.prompt_len,
                response_len=args.response_len, steps=args.steps, repeats=args.repeats, lr=1e-6,
                beta=0.1, threads=2, seed=args.seed)
    out = {}
    for peer in args.peers.split(','):
        if peer == 'trl':
            for pre in (False, True):
                name = 'trl' + ('_precomputed' if pre else '')
                common.log(f'running {name} ...')
                out[name] = common.run_peer('trl_dpo.py', args.trl_python,
                                            dict(spec, precompute_ref=pre))
        elif peer == 'tunix':
            common.log('running tunix ...')
            out['tunix'] = common.run_peer('tunix_dpo.py', args.tunix_python, spec)
        elif peer:
            raise ValueError(f'unknown peer {peer!r}')
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', default='small', choices=sorted(common.WORKLOADS))
    parser.add_argument('--mode', default='dpo', choices=('dpo', 'sft'),
                        help="'sft': the SFT update on the same rows (for MFU on a GPU)")
    parser.add_argument('--pairs', type=int, default=8)
    parser.add_argument('--prompt_len', type=int, default=64)
    parser.add_argument('--response_len', type=int, default=64)
    parser.add_argument('--steps', type=int, default=10, help='timed steps per round')
    parser.add_argument('--repeats', type=int, default=2, help='rounds of --steps steps')
    parser.add_argument('--remat', action='store_true', help='rematerialise blocks (1b on GPU)')
    parser.add_argument('--peers', default='trl,tunix', help="comma-separated; '' for none")
    parser.add_argument('--trl_python', default=common.default_python('trl'))
    parser.add_argument('--tunix_python', default=common.default_python('tunix'))
    common.add_shared_flags(parser)
    args = parser.parse_args(argv)

    cfg = common.model_config(args.size, args.layers)
    if args.remat:
        cfg = cfg.replace(remat=True)
    load_before = common.load_average()
    hw = common.hardware_limit(size=args.limit_size, bandwidth_mib=args.limit_mib)
    common.log(f'{hw["device"]}; load average {load_before}; matmul peak '
               f'{hw["matmul_peak_flops"] / 1e9:.1f} GFLOP/s, read bandwidth '
               f'{hw["read_bandwidth_bytes_per_s"] / 1e9:.1f} GB/s')
    common.log(f'{args.mode} {args.size}: {cfg.num_params() / 1e6:.2f}M params, {args.pairs} '
               f'pairs x ({args.prompt_len} + {args.response_len}) tokens, {args.repeats} x '
               f'{args.steps} steps')
    modes = ('sft',) if args.mode == 'sft' else ('dpo', 'dpo_precomputed')
    ours = {}
    for mode in modes:
        ours[mode] = measure(cfg, args, mode, hw)
        common.log(f'alignjax {mode}: {ours[mode]["ms_per_step"]:.2f} ms/step')
    peers = peer_figures(args) if args.peers and args.mode == 'dpo' else {}

    main_mode = modes[0]
    result = {
        'workload': args.mode, 'size': args.size, 'params': cfg.num_params(), 'pairs': args.pairs,
        'prompt_len': args.prompt_len, 'response_len': args.response_len,
        **ours[main_mode], 'variants': {k: v for k, v in ours.items() if k != main_mode},
        'peers': peers, 'hardware': hw, 'jax': jax.__version__, 'load_average_before': load_before,
        'load_average_after': common.load_average()
    }
    rows = []
    for name, r in ours.items():
        rows.append([
            f'alignjax {name}', r['ms_per_step'], r['warmup_s'], r['tokens_per_s'],
            r['fraction_of_matmul_peak'], r['executed_fraction_of_matmul_peak'], None
        ])
    ratios = {}
    tokens = 2 * args.pairs * (args.prompt_len + args.response_len)
    for name, r in peers.items():
        if r.get('median_s'):
            ms = 1e3 * r['median_s']
            same = ours['dpo_precomputed' if 'precomputed' in name else 'dpo']
            ratios[name] = round(ms / same['ms_per_step'], 2)
            # Peers run the plain forward: what they execute is the model-FLOP count.
            frac = round(same['model_flops_per_step'] / r['median_s'] / hw['matmul_peak_flops'], 4)
            rows.append([
                name,
                round(ms, 3), r['warmup_s'],
                round(tokens / r['median_s'], 1), frac, frac, ratios[name]
            ])
        else:
            rows.append([name, None, None, None, None, None, r.get('error', '')[:80]])
    result['speedup_vs_peers'] = ratios
    common.log(
        common.table(rows, [
            '', 'ms/step', 'warm-up s', 'tokens/s', 'of peak (model)', 'of peak (executed)',
            'peer/alignjax'
        ]))
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
