"""Readers of record files: JSON arrays, parquet files and `datasets.save_to_disk` folders.

Each reads every record and validates it (``records.validate_record``) before training starts,
and returns a ``records.Located`` list: the records, and ``where(i)``, the place of record ``i``
in its file (``PATH:LINE`` for JSONL, ``FILE: row N`` for parquet and Arrow, 1-based), which
every later message about a record names. Parquet and Arrow are read with pyarrow, which alignjax's
``[data]`` extra brings (``datasets`` itself is not needed: a saved dataset is Arrow IPC streams
plus JSON metadata).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import glob
import json
import os
from typing import Any

from alignjax.data import records as records_lib
from alignjax.errors import DataError, require

Located = records_lib.Located


def _rows_where(files: Sequence[str], counts: Sequence[int]) -> Callable[[int], str]:
    def where(i: int) -> str:
        for path, n in zip(files, counts):
            if i < n:
                return f'{path}: row {i + 1}'
            i -= n
        raise IndexError(i)

    return where


def _validated(rows: Sequence[Any], kind: str, where: Callable[[int], str]) -> Located:
    return Located([records_lib.validate_record(r, kind, where(i)) for i, r in enumerate(rows)],
                   where)


def read_json(path: str, kind: str) -> Located:
    """A JSON file holding an array of records."""
    try:
        with open(path, 'rb') as f:
            raw = f.read().removeprefix(records_lib.BOM)
    except FileNotFoundError:
        raise DataError(f'{path}: no such file') from None
    except IsADirectoryError:
        raise DataError(f'{path}: is a directory, not a JSON file') from None
    try:
        rows = json.loads(raw.decode('utf-8'))
    except UnicodeDecodeError as e:
        raise DataError(f'{path}: not valid UTF-8 (byte offset {e.start})') from None
    except json.JSONDecodeError as e:
        hint = ('; one JSON object a line is jsonl:PATH' if raw.lstrip()[:1] == b'{' else '')
        raise DataError(f'{path}: invalid JSON ({e}){hint}') from None
    if not isinstance(rows, list):
        raise DataError(f'{path}: a json: file must hold an array of records, got '
                        f'{type(rows).__name__}')
    if not rows:
        raise DataError(f'{path}: empty array (no records)')
    return _validated(rows, kind, lambda i: f'{path}: record {i + 1}')


def _files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not files:
        raise DataError(f'{pattern}: no file matches')
    for path in files:
        if not os.path.isfile(path):
            raise DataError(f'{path}: no such file')
    return files


def read_parquet(pattern: str, kind: str) -> Located:
    """Parquet files (a path or a glob, read in sorted order), one record a row."""
    pq = require('pyarrow.parquet', f'parquet:{pattern}', 'data', package='pyarrow')
    return _read_tables(_files(pattern), pq.read_table, 'parquet file', kind, pattern)


def _read_tables(files: Sequence[str], read: Callable[[str], Any], what: str, kind: str,
                 name: str) -> Located:
    """The validated rows of the pyarrow tables `read(path)` of `files`, in order."""
    rows, counts = [], []
    for path in files:
        try:
            table = read(path)
        except Exception as e:  # pylint: disable=broad-except  (pyarrow's errors vary by cause)
            raise DataError(f'{path}: not a readable {what} ({e})') from None
        rows.extend(table.to_pylist())
        counts.append(table.num_rows)
    if not rows:
        raise DataError(f'{name}: no records')
    return _validated(rows, kind, _rows_where(files, counts))


def _read_json_file(path: str) -> Any:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f'{path}: unreadable ({e})') from None


def saved_dataset_dir(directory: str, split: str) -> str:
    """The folder of one split of a `save_to_disk` folder (a Dataset, or a DatasetDict's split)."""
    if not os.path.isdir(directory):
        raise DataError(f'{directory}: no such directory')
    dict_file = os.path.join(directory, 'dataset_dict.json')
    if os.path.isfile(dict_file):
        splits = _read_json_file(dict_file).get('splits', [])
        if split not in splits:
            raise DataError(f'{directory}: a dataset with splits {", ".join(splits)}; name one '
                            f'as hf:{directory}:SPLIT (asked for {split!r})')
        return os.path.join(directory, split)
    return directory


def read_saved_dataset(directory: str, kind: str, split: str = 'train') -> Located:
    """A `datasets.save_to_disk` folder: its Arrow files in the order state.json lists them."""
    ipc = require('pyarrow.ipc', f'hf:{directory}', 'data', package='pyarrow')
    folder = saved_dataset_dir(directory, split)
    state_file = os.path.join(folder, 'state.json')
    if not os.path.isfile(state_file):
        raise DataError(f'{folder}: not a datasets.save_to_disk folder (no state.json)')
    names = [d['filename'] for d in _read_json_file(state_file).get('_data_files', [])]

    def read(path):
        with open(path, 'rb') as f:
            return ipc.open_stream(f).read_all()

    return _read_tables([os.path.join(folder, n) for n in names], read, 'Arrow stream', kind,
                        folder)
