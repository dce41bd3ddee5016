"""Checkpoint save time on a training step's critical path: synchronous against asynchronous
orbax saving (`config.async_checkpoint`), for a state of `--mib` MiB (float32, parameters and two
Adam moments) on the CPU. Prints, per mode, the seconds the `Checkpointer.save` call blocks (what
the step waits for) and the seconds until the files are committed.

    python benchmarks/checkpoint_save.py --mib=768
"""

import argparse
import json
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp

from alignjax import checkpoint as ckpt_lib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--mib', type=int, default=768)
    parser.add_argument('--saves', type=int, default=3)
    args = parser.parse_args()
    n = args.mib * 2**20 // 4 // 3
    keys = jax.random.split(jax.random.key(0), 3)  # random values: no compression shortcut
    state = {
        name: jax.random.normal(k, (n,), jnp.float32)
        for k, name in zip(keys, ('params', 'mu', 'nu'))
    }
    jax.block_until_ready(state)
    rows = {}
    for mode in ('sync', 'async'):
        directory = tempfile.mkdtemp(prefix=f'ckpt_{mode}_')
        ckpt = ckpt_lib.Checkpointer(directory, save_every=1, keep=2, async_save=mode == 'async')
        blocked, committed = [], []
        for step in range(1, args.saves + 1):
            state = jax.tree.map(lambda x: x * 1.5, state)  # a new state each step
            jax.block_until_ready(state)
            start = time.perf_counter()
            ckpt.save(step, state)
            blocked.append(time.perf_counter() - start)
            ckpt.wait()
            committed.append(time.perf_counter() - start)
        ckpt.close()
        shutil.rmtree(directory)
        rows[mode] = {'blocked_s': min(blocked), 'committed_s': min(committed)}
    rows['blocked_ratio_sync_over_async'] = rows['sync']['blocked_s'] / rows['async']['blocked_s']
    print(json.dumps({'state_mib': args.mib, **rows}))


if __name__ == '__main__':
    main()
