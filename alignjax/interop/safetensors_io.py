"""The safetensors format, read and written one tensor at a time with NumPy only.

A file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte range
of the data section; optional `__metadata__`), then the raw little-endian data. Reading it here
rather than through `safetensors.safe_open(framework='numpy')` is what makes bfloat16 possible
(that backend raises "data type 'bfloat16' not understood"), without torch; writing it here lets
a model too large for host memory be streamed out one gathered tensor at a time.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Sequence

import ml_dtypes
import numpy as np

DTYPES = {'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16),
          'BF16': np.dtype(ml_dtypes.bfloat16), 'F64': np.dtype(np.float64)}
CODES = {v: k for k, v in DTYPES.items()}


class Checkpoint:
    """The tensors of `model.safetensors` or of the shards named by `model.safetensors.index.json`.

    Only headers are read on construction; `read(name)` reads one tensor's bytes.
    """

    def __init__(self, directory: str):
        index = os.path.join(directory, 'model.safetensors.index.json')
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)['weight_map'].values()))
        elif os.path.exists(os.path.join(directory, 'model.safetensors')):
            files = ['model.safetensors']
        else:
            raise FileNotFoundError(f'{directory}: no model.safetensors or '
                                    'model.safetensors.index.json')
        self.entries = {}  # name -> (file, start of its data section, header entry)
        for name in files:
            path = os.path.join(directory, name)
            with open(path, 'rb') as f:
                (size,) = struct.unpack('<Q', f.read(8))
                header = json.loads(f.read(size))
            header.pop('__metadata__', None)
            for key, info in header.items():
                if key in self.entries:
                    raise ValueError(f'{path}: tensor {key} is also in {self.entries[key][0]}')
                if info['dtype'] not in DTYPES:
                    raise ValueError(f'{path}: tensor {key} has unsupported dtype {info["dtype"]} '
                                     f'(supported: {sorted(DTYPES)})')
                self.entries[key] = (path, 8 + size, info)

    def dtype(self, name: str) -> np.dtype:
        return DTYPES[self.entries[name][2]['dtype']]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name][2]['shape'])

    def read(self, name: str) -> np.ndarray:
        path, start, info = self.entries[name]
        begin, end = info['data_offsets']
        with open(path, 'rb') as f:
            f.seek(start + begin)
            data = f.read(end - begin)
        return np.frombuffer(data, DTYPES[info['dtype']]).reshape(info['shape'])


def write(path: str | None, tensors: Sequence[tuple[str, tuple, np.dtype, Callable]]) -> None:
    """Streams `tensors` (name, shape, dtype, fetch) into a safetensors file at `path`.

    Each `fetch()` is called once, in order, and must return a NumPy array of that shape and
    dtype. With `path=None` the tensors are still fetched (so that collective gathers run on
    every process) but nothing is written.
    """
    header, offset = {'__metadata__': {'format': 'pt'}}, 0
    for name, shape, dtype, _ in tensors:
        size = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {'dtype': CODES[np.dtype(dtype)], 'shape': list(shape),
                        'data_offsets': [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(',', ':')).encode()
    blob += b' ' * (-len(blob) % 8)  # the data section starts 8-byte aligned
    f = open(path, 'wb') if path is not None else None  # pylint: disable=consider-using-with
    try:
        if f is not None:
            f.write(struct.pack('<Q', len(blob)) + blob)
        for name, shape, dtype, fetch in tensors:
            data = np.ascontiguousarray(fetch())
            if data.shape != tuple(shape) or data.dtype != np.dtype(dtype):
                raise ValueError(f'{name}: fetched {data.shape} {data.dtype}, declared {shape} '
                                 f'{np.dtype(dtype)}')
            if f is not None:
                f.write(data.tobytes())
    finally:
        if f is not None:
            f.close()
