"""The over-optimisation monitors' cost: a ReMax iteration with and without them, same process.

    python benchmarks/monitors.py [--model small --batch 64 --new_tokens 12 --iters 10]

Two `policy_gradient.build`s of `experiments/remax.py:tiny` (random initialisation, the gold
reward, the given model preset and batch), one with config.monitors.top_k = 0 and no thresholds,
one with top_k = --top_k and every threshold of `alignjax/repro/monitors.py` checked on each
iteration's metrics (`alignjax.monitors.Monitors`, as the loop does). What the monitors add is
the top-k pass over the rollout's samples (one more policy forward and its [B, R, V] logits) and
the host-side check; the ensemble spread and the proxy-minus-gold gap come with the scoring
already. Iterations interleave the two (alternating which goes first); reported: median seconds
of the rollout (`batches`), the update and their sum, and monitored / plain ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from alignjax import experiment_lib, monitors, sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from alignjax.repro import monitors as repro_monitors  # pylint: disable=g-import-not-at-top,wrong-import-position
import remax_vs_ppo  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def make_config(args, top_k: int):
    c = experiment_lib.load_config(os.path.join(ROOT, 'experiments', 'remax.py') + ':steps=100')
    c.model = experiment_lib.load_config(
        os.path.join(ROOT, 'experiments', 'remax.py') + f':model={args.model}').model
    c.init_from = c.reference_from = ''
    c.data.batch_size, c.rl.max_new_tokens = args.batch, args.new_tokens
    c.mesh.shape = (1, 1, 1)
    c.monitors.top_k = top_k
    c.monitors.thresholds = ','.join(repro_monitors.THRESHOLDS) if top_k else ''
    return c


class Arm(remax_vs_ppo.Bench):
    """`remax_vs_ppo.Bench`'s iteration (rollout, then the update, as `loop.train` steps them),
    with the monitors checked on its metrics, as the loop does, inside the timed update."""
    def __init__(self, config, mesh):
        super().__init__(config.algo, config, mesh)
        self.monitors = monitors.Monitors.from_config(config, log=lambda _: None)

    def iteration(self, step: int) -> tuple[float, float]:
        rollout_s, update_s = super().iteration(step)
        start = time.perf_counter()
        self.monitors.check(step + 1, {**jax.device_get(self.metrics), **self.host_metrics})
        return rollout_s, update_s + time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='small')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--new_tokens', type=int, default=12)
    parser.add_argument('--top_k', type=int, default=4)
    parser.add_argument('--iters', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    args = parser.parse_args(argv)
    mesh = sharding.make_mesh((1, 1, 1))
    arms = {
        'plain': Arm(make_config(args, 0), mesh), 'monitored': Arm(make_config(args, args.top_k),
                                                                   mesh)
    }
    times = {name: [] for name in arms}
    for i in range(args.warmup + args.iters):
        order = list(arms) if i % 2 == 0 else list(arms)[::-1]
        for name in order:
            r, u = arms[name].iteration(i)
            if i >= args.warmup:
                times[name].append((r, u))
    result = {
        'model': args.model, 'batch': args.batch, 'new_tokens': args.new_tokens,
        'top_k': args.top_k, 'device': jax.devices()[0].platform
    }
    for name, ts in times.items():
        t = np.asarray(ts)
        result[name] = {
            'rollout_median_s': float(np.median(t[:, 0])),
            'update_median_s': float(np.median(t[:, 1])),
            'iteration_median_s': float(np.median(t.sum(axis=1)))
        }
    result['ratios'] = {
        k: round(result['monitored'][k] / result['plain'][k], 3)
        for k in ('rollout_median_s', 'update_median_s', 'iteration_median_s')
    }
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
