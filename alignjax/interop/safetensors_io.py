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

DTYPES = {
    'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16), 'BF16': np.dtype(ml_dtypes.bfloat16),
    'F64': np.dtype(np.float64)
}
CODES = {v: k for k, v in DTYPES.items()}


class Checkpoint:
    """The tensors of `model.safetensors` or of the shards named by `model.safetensors.index.json`.

    Only headers are read on construction; `read(name)` reads one tensor's bytes, and
    `read_block(name, ranges)` only those of a block of it (a host's shard), so that every
    process of a pod reads its own part of the checkpoint. `bytes_read` counts what was read.
    """
    def __init__(self, directory: str, name: str = 'model'):
        index = os.path.join(directory, f'{name}.safetensors.index.json')
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)['weight_map'].values()))
        elif os.path.exists(os.path.join(directory, f'{name}.safetensors')):
            files = [f'{name}.safetensors']
        else:
            raise FileNotFoundError(f'{directory}: no {name}.safetensors or '
                                    f'{name}.safetensors.index.json')
        self.entries = {}  # name -> (file, start of its data section, header entry)
        self.bytes_read = 0
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

    def nbytes(self, name: str) -> int:
        begin, end = self.entries[name][2]['data_offsets']
        return end - begin

    def read(self, name: str) -> np.ndarray:
        return self.read_block(name, [(0, n) for n in self.shape(name)])

    def read_block(self, name: str, ranges: Sequence[tuple[int, int]]) -> np.ndarray:
        """The block `[r0:r1, c0:c1, ...]` of tensor `name` (one (start, stop) per axis), reading
        only its rows: one read when the trailing axes are whole, one a row otherwise."""
        path, start, info = self.entries[name]
        shape, dtype = tuple(info['shape']), DTYPES[info['dtype']]
        ranges = [tuple(r) for r in ranges]
        if len(ranges) != len(shape):
            raise ValueError(f'{name}: {len(ranges)} ranges for a tensor of shape {shape}')
        base = start + info['data_offsets'][0]
        # The last axis whose range is not whole; a run of axes after it is contiguous.
        cut = max([i for i, (r, n) in enumerate(zip(ranges, shape)) if r != (0, n)], default=-1)
        if cut <= 0:  # whole tensor, or a block of rows (axis 0): one contiguous read
            r0, r1 = ranges[0] if shape else (0, 1)
            row = math.prod(shape[1:]) * dtype.itemsize
            data = self._pread(path, base + r0 * row, (r1 - r0) * row)
            out_shape = ((r1 - r0), *shape[1:]) if shape else ()
            return np.frombuffer(data, dtype).reshape(out_shape)
        # Rows of the leading axes one at a time, each a contiguous run of the later ones.
        lead = [range(*r) for r in ranges[:cut]]
        run = math.prod(shape[cut + 1:]) * dtype.itemsize
        c0, c1 = ranges[cut]
        strides = [math.prod(shape[i + 1:]) * dtype.itemsize for i in range(len(shape))]
        pieces = []
        with open(path, 'rb') as f:
            for idx in np.ndindex(*(len(r) for r in lead)):
                offset = base + sum((lead[i][j]) * strides[i] for i, j in enumerate(idx))
                pieces.append(os.pread(f.fileno(), (c1 - c0) * run, offset + c0 * run))
        self.bytes_read += sum(len(p) for p in pieces)
        out = np.frombuffer(b''.join(pieces), dtype).reshape(*(len(r) for r in lead), c1 - c0,
                                                             *shape[cut + 1:])
        return out

    def _pread(self, path: str, offset: int, size: int) -> bytes:
        chunks, done = [], 0
        with open(path, 'rb') as f:
            while done < size:  # one pread returns at most ~2 GiB on Linux
                chunk = os.pread(f.fileno(), min(size - done, 1 << 30), offset + done)
                if not chunk:
                    break
                chunks.append(chunk)
                done += len(chunk)
        data = b''.join(chunks)
        if len(data) != size:
            raise ValueError(f'{path}: truncated (wanted {size} bytes at {offset}, got '
                             f'{len(data)})')
        self.bytes_read += size
        return data


def write(path: str | None, tensors: Sequence[tuple[str, tuple, np.dtype, Callable]]) -> None:
    """Streams `tensors` (name, shape, dtype, fetch) into a safetensors file at `path`.

    Each `fetch()` is called once, in order, and must return a NumPy array of that shape and
    dtype. With `path=None` the tensors are still fetched (so that collective gathers run on
    every process) but nothing is written.
    """
    header, offset = {'__metadata__': {'format': 'pt'}}, 0
    for name, shape, dtype, _ in tensors:
        size = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {
            'dtype': CODES[np.dtype(dtype)], 'shape': list(shape),
            'data_offsets': [offset, offset + size]
        }
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
