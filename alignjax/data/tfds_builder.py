"""TFDS datasets built from local JSONL files, read back without TensorFlow.

``build_jsonl_dataset`` validates JSONL files (``records.read_jsonl``) and
writes them as a TFDS dataset in the ``array_record`` file format:
``DATA_DIR/NAME/1.0.0/{dataset_info.json, features.json,
NAME-SPLIT.array_record-0000i-of-0000N}``. ``open_tfds_source`` reads one
split through ``tfds.data_source`` (random access, no TensorFlow, no
tf.data) and returns records as plain Python dicts of ``str`` and ``float``.

TFDS 4.9.10 can write array_record without TensorFlow (its serializer uses
its own copy of the ``tf.train.Example`` protos). One snag: a builder class
defined in a package module looks up its ``code_path`` with
``importlib_resources``, which TFDS only declares as a dependency for Python
< 3.9; ``_JsonlBuilder`` sets ``code_path = None`` (there is no checksums
file to find) so that the lookup never happens.

Floats are stored as float32 (``tf.train.Example`` has no float64), so a
margin of 0.1 reads back as 0.10000000149011612.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
import re
import shutil
import tempfile
from typing import Any

import numpy as np

from alignjax.data import records as records_lib
from alignjax.errors import require

DataError = records_lib.DataError
VERSION = '1.0.0'
_NAME_RE = re.compile(r'^[a-z][a-z0-9_]*$')


def _tfds():
    # Imported lazily: importing TFDS costs ~0.5 s and most runs never need it; it is an extra.
    require('array_record', 'a tfds: data source', 'tfds', package='array-record')
    return require('tensorflow_datasets', 'a tfds: data source', 'tfds',
                   package='tensorflow-datasets')


def _features(kind: str, records: Sequence[Mapping[str, Any]]):
    """The FeaturesDict for ``kind``; prompt records may add scalar extras."""
    tfds = _tfds()
    text = tfds.features.Text
    if kind == 'sft':
        return tfds.features.FeaturesDict({
            'prompt': text(),
            'response': text(),
            'messages': tfds.features.Sequence({'role': text(), 'content': text()}),
        })
    if kind == 'preference':
        return tfds.features.FeaturesDict({
            'prompt': text(),
            'chosen': text(),
            'rejected': text(),
            'margin': np.float32,
        })
    spec: dict[str, Any] = {'prompt': text()}
    for key in sorted(set(records[0]) - {'prompt'}):
        values = [r[key] for r in records if key in r]  # Keys checked later.
        if all(isinstance(v, str) for v in values):
            spec[key] = text()
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            spec[key] = np.int64
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            spec[key] = np.float32
        else:
            raise DataError(f'key {key!r}: extra keys of prompt records must be all '
                            f'strings or all numbers to build a TFDS dataset')
    return tfds.features.FeaturesDict(spec)


def _to_example(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    if kind == 'sft':
        if 'messages' in record:
            return {'prompt': '', 'response': '', 'messages': list(record['messages'])}
        return {'prompt': record['prompt'], 'response': record['response'], 'messages': []}
    return dict(record)


def _make_builder_class():
    """Defines the builder class on first use (TFDS is imported lazily)."""
    tfds = _tfds()

    class _JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Builder whose name, features and examples are given at runtime."""

        code_path = None  # See the module docstring.

        def __init__(self, *, name, features, split_examples, **kwargs):
            self.name = name
            self.VERSION = tfds.core.Version(VERSION)  # Name TFDS reads.
            self._features = features
            self._split_examples = split_examples
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=self._features,
                                         description='Built by alignjax from local JSONL files.',
                                         disable_shuffling=True)

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: iter(examples) for split, examples in self._split_examples.items()}

        def _generate_examples(self):
            raise NotImplementedError  # Examples come from _split_generators.

    return _JsonlBuilder


def _resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> str | None:
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get('TFDS_DATA_DIR')  # None: TFDS's own default.


def build_jsonl_dataset(
    name: str,
    jsonl_paths: Mapping[str, str | os.PathLike[str]],
    kind: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Builds TFDS dataset ``name`` (array_record files) from JSONL files.

    Every file is read and validated before anything is written. Records keep
    their file order (shuffling is left to the input pipeline).

    Args:
      name: dataset name, snake_case (``[a-z][a-z0-9_]*``).
      jsonl_paths: split name -> JSONL file, e.g.
        ``{"train": ..., "test": ...}``.
      kind: record kind of every file: ``'sft'``, ``'preference'`` or
        ``'prompt'``.
      data_dir: TFDS data dir; defaults to ``$TFDS_DATA_DIR``, then TFDS's
        default (``~/tensorflow_datasets``).
      overwrite: replace an existing build of the same name and version;
        otherwise an existing build is an error.

    Raises:
      DataError: bad name, no splits, invalid records, or existing dataset.
    """
    if not _NAME_RE.match(name):
        raise DataError(f'TFDS dataset name {name!r} must match {_NAME_RE.pattern}')
    if not jsonl_paths:
        raise DataError(f'TFDS dataset {name!r}: no splits given')
    split_records = {
        split: records_lib.read_jsonl(path, kind) for split, path in jsonl_paths.items()
    }
    all_records = [r for rs in split_records.values() for r in rs]
    features = _features(kind, all_records)
    if kind == 'prompt':  # Every record must have the same keys.
        for split, path in jsonl_paths.items():
            for i, r in enumerate(split_records[split], start=1):
                if set(r) != set(features.keys()):
                    raise DataError(f'{os.fspath(path)}: record {i} has keys {sorted(r)}, '
                                    f'expected {sorted(features.keys())} like the first')
    split_examples = {
        split: [(i, _to_example(kind, r)) for i, r in enumerate(rs)]
        for split, rs in split_records.items()
    }

    data_dir = _resolve_data_dir(data_dir)
    make = lambda: _make_builder_class(
    )(name=name, features=features, split_examples=split_examples, data_dir=data_dir, file_format=
      'array_record')
    # TFDS makes a temporary directory for metadata from its cloud bucket before it checks that
    # the bucket is disabled, and never removes it: keep that inside a scratch directory.
    with tempfile.TemporaryDirectory() as scratch:
        previous, tempfile.tempdir = tempfile.tempdir, scratch
        try:
            builder = make()
            if builder.is_prepared():
                if not overwrite:
                    raise DataError(f'TFDS dataset {name!r} already exists in {builder.data_dir}; '
                                    f'pass overwrite=True to rebuild it')
                shutil.rmtree(builder.data_dir)
                builder = make()
            builder.download_and_prepare(download_dir=os.path.join(scratch, 'downloads'))
        finally:
            tempfile.tempdir = previous


def _to_python(value: Any) -> Any:
    """bytes -> str, NumPy scalars -> float/int, arrays -> lists."""
    if isinstance(value, bytes):
        return value.decode('utf-8')
    if isinstance(value, np.ndarray):
        return [_to_python(v) for v in value.tolist()]
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (np.integer, np.bool_)):
        return int(value)
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return value


class TfdsRecordSource:
    """Random-access view of one TFDS split as validated Python records.

    Attributes:
      name: dataset name.
      split: split name (TFDS split syntax, e.g. ``train[:10%]``).
      kind: record kind returned.
    """
    def __init__(self, source: Any, *, name: str, split: str, kind: str):
        self._source = source
        self.name, self.split, self.kind = name, split, kind

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} records')
        example = _to_python(self._source[index])
        if self.kind == 'sft':
            messages = example.get('messages') or {}
            if messages.get('role'):
                example = {
                    'messages': [{'role': r, 'content': c}
                                 for r, c in zip(messages['role'], messages['content'])]
                }
            else:
                example = {'prompt': example['prompt'], 'response': example['response']}
        where = f'tfds:{self.name}:{self.split}[{index}]'
        return records_lib.validate_record(example, self.kind, where)

    def __repr__(self) -> str:
        return (f'TfdsRecordSource(name={self.name!r}, split={self.split!r}, '
                f'kind={self.kind!r}, len={len(self)})')


_REQUIRED_FEATURES = {
    'sft': {'prompt', 'response'}, 'preference': {'prompt', 'chosen', 'rejected', 'margin'},
    'prompt': {'prompt'}
}


def open_tfds_source(
    name: str,
    *,
    split: str = 'train',
    kind: str,
    data_dir: str | os.PathLike[str] | None = None,
) -> TfdsRecordSource:
    """Opens split ``split`` of TFDS dataset ``name`` for random access.

    Args:
      name: dataset name (optionally ``name/config:version``).
      split: TFDS split, slicing allowed (``train[:100]``).
      kind: record kind to return; ``'prompt'`` works on any dataset with a
        ``prompt`` feature (e.g. the prompts of a preference dataset).
      data_dir: defaults to ``$TFDS_DATA_DIR``, then TFDS's default.

    Returns:
      A ``TfdsRecordSource``; records are validated as they are read.
    """
    if kind not in records_lib.KINDS:
        raise DataError(f'unknown record kind {kind!r}')
    tfds = _tfds()
    data_dir = _resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        source = builder.as_data_source(split=split)
    except Exception as e:  # TFDS raises several types for a missing dataset.
        raise DataError(f'tfds:{name}:{split}: cannot open in data_dir={data_dir!r} '
                        f'({type(e).__name__}: {e})') from e
    missing = _REQUIRED_FEATURES[kind] - set(builder.info.features.keys())
    if missing:
        raise DataError(f'tfds:{name}:{split}: features '
                        f'{sorted(builder.info.features.keys())} lack {sorted(missing)} '
                        f'needed for {kind} records')
    return TfdsRecordSource(source, name=name, split=split, kind=kind)
