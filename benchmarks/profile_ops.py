"""Where a workload's step spends its time, by XLA operation, on the CPU.

    PYTHONPATH=. python benchmarks/profile_ops.py --workload=dpo --size=tiny
    PYTHONPATH=. python benchmarks/profile_ops.py --workload=grpo --size=small --steps=3

Runs the workload's step (what benchmarks/dpo.py or grpo.py times) a few times under
`jax.profiler.trace` with XLA:CPU's per-operation trace events on, then sums the events by the
JAX operation they came from (the `op_name` metadata of the compiled update's HLO: e.g.
`transpose(jvp(btd,dhk->bthk))/dot_general` is the backward of the q/k/v projection) and by
kernel. Operations run concurrently on the two threads, so the sum of operation times exceeds the
wall time; the shares say where the work is. Host-side Python (batch placement, re-binding the
model) shows under the `$`-prefixed names of the host rows. Tracing slows the step: use
benchmarks/dpo.py / grpo.py for the times themselves.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_cpu_enable_xprof_traceme=true').strip()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

common.set_threads(2)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from alignjax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position

HOST_ROWS = ('ThunkExecutor', 'PjitFunction', 'SlinkyThreadPool', 'CommonPjRt', 'shard_args', '$')


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX operation (op_name metadata) it came from."""
    out = {}
    for m in re.finditer(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', hlo_text, re.M):
        out[m.group(1)] = re.sub(r'^jit\([^)]*\)/', '', m.group(2))
    return out


def trace_events(step, steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(step())
        path = glob.glob(os.path.join(d, '**', '*.trace.json.gz'), recursive=True)[0]
        with gzip.open(path) as f:
            events = json.load(f)
    events = events['traceEvents'] if isinstance(events, dict) else events
    return [e for e in events if e.get('ph') == 'X']


def summarise(events, names: dict[str, str], steps: int, top: int) -> dict:
    ops, host = collections.Counter(), collections.Counter()
    for e in events:
        name = e['name']
        if name.startswith(HOST_ROWS):
            host[name] += e['dur']
        else:
            ops[names.get(name, name)] += e['dur']
    total = sum(ops.values())
    per_step = lambda us: round(us / steps / 1e3, 3)
    rows = [[k[:90], per_step(v), round(v / total, 3)] for k, v in ops.most_common(top)]
    common.log(common.table(rows, ['operation', 'ms/step', 'share']))
    wall = max((v for k, v in host.items() if k.startswith('ThunkExecutor::Execute (wait')),
               default=0)
    return {
        'op_ms_per_step': per_step(total), 'execute_wait_ms_per_step': per_step(wall),
        'ops': {k: per_step(v) for k, v in ops.most_common(top)},
        'host': {k[:80]: per_step(v) for k, v in host.most_common(top)}
    }


def dpo_step(args):
    import dpo  # pylint: disable=g-import-not-at-top
    a = argparse.Namespace(pairs=8, prompt_len=64, response_len=64, seed=0, steps=10, repeats=1)
    mode = 'dpo_precomputed' if args.workload == 'dpo_precomputed' else args.workload
    step = dpo.Step(common.model_config(args.size), a, mode)
    host = step.batches[0]
    host = step.ref(host) if mode == 'dpo_precomputed' else host
    with jax.set_mesh(step.mesh):
        batch = sharding.shard_batch(host, step.mesh)
        hlo = step.update.lower(step.state, step.frozen, batch).compile().as_text()
    return step, hlo


def rl_step(args):
    import grpo  # pylint: disable=g-import-not-at-top
    a = argparse.Namespace(algo=args.workload, size=args.size, prompts=2, samples=4, prompt_len=32,
                           new_tokens=64, seed=0, steps=10, repeats=1)
    it = grpo.Iteration(grpo.make_config(a), a)
    with jax.set_mesh(it.mesh):
        host, _ = it.algo.batches(0, it.model, jax.device_get(it.state['algo']))
        batch = sharding.shard_batch(host, it.mesh)
        hlo = it.update.lower(it.state, it.frozen, batch).compile().as_text()
    return it, hlo


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workload', default='dpo',
                        choices=('dpo', 'dpo_precomputed', 'grpo', 'ppo'))
    parser.add_argument('--size', default='tiny', choices=('tiny', 'small'))
    parser.add_argument('--steps', type=int, default=5, help='traced steps (after 2 warm-up)')
    parser.add_argument('--top', type=int, default=30)
    args = parser.parse_args(argv)
    step, hlo = (dpo_step if args.workload.startswith('dpo') else rl_step)(args)
    for _ in range(2):
        jax.block_until_ready(step())
    common.log(f'{args.workload} {args.size}: {args.steps} traced steps; load average '
               f'{common.load_average()}')
    result = summarise(trace_events(step, args.steps), op_names(hlo), args.steps, args.top)
    result.update(workload=args.workload, size=args.size, steps=args.steps)
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
