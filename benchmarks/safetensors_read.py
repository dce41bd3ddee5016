"""Reading a host's shard of a safetensors tensor against reading it whole
(`safetensors_io.Checkpoint.read_block`): a [16384, 4096] bfloat16 tensor (128 MiB), best of 5,
from the page cache.

    python benchmarks/safetensors_read.py
"""

import json
import tempfile
import time

import ml_dtypes
import numpy as np

from alignjax.interop import safetensors_io


def best(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    x = np.random.default_rng(0).standard_normal((16384, 4096), np.float32)
    x = x.astype(ml_dtypes.bfloat16)
    with tempfile.TemporaryDirectory() as directory:
        safetensors_io.write(f'{directory}/model.safetensors', [('w', x.shape, x.dtype, lambda: x)])
        ckpt = safetensors_io.Checkpoint(directory)
        rows, cols = [(0, 2048), (0, 4096)], [(0, 16384), (0, 512)]
        assert (ckpt.read_block('w', cols) == x[:, :512]).all()
        print(
            json.dumps({
                'mib': x.nbytes / 2**20, 'whole_s': best(lambda: ckpt.read('w')),
                'rows_eighth_s': best(lambda: ckpt.read_block('w', rows)),
                'columns_eighth_s': best(lambda: ckpt.read_block('w', cols))
            }))


if __name__ == '__main__':
    main()
