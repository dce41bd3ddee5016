"""Record kinds, their validation, and the readers of JSONL and JSON files.

Three kinds of record feed the algorithms, each accepted in the shapes that
``data.shapes`` lists (TRL's standard and conversational forms, HH-RLHF and
UltraFeedback, prompt-completion, content as parts, tool turns):

* ``'sft'``: ``{"prompt": str, "response": str}`` or a chat
  ``{"messages": [{"role": ..., "content": ...}, ...]}`` whose last message
  is the assistant's response.
* ``'preference'``: ``{"prompt", "chosen", "rejected"[, "margin"]}``, text or
  messages; the margin is a number (default 0.0) used by margin-aware reward
  losses.
* ``'prompt'``: ``{"prompt": str | messages, ...}``; extra keys are kept
  (they can carry metadata for a gold function or a judge).

For ``'sft'`` and ``'preference'`` records, keys other than the ones above
are dropped by ``validate_record``. Files are read and checked in full before
any training starts, and every error names the file and the 1-based line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import json
import os
from typing import Any

from alignjax.data import shapes
from alignjax.errors import DataError

KINDS = ('sft', 'preference', 'prompt')
ROLES = shapes.ROLES

BOM = b'\xef\xbb\xbf'  # UTF-8 byte-order mark, as Windows tools write it: skipped


class Located(list):
    """Records with ``where(i)``: the file position of record ``i`` (``PATH:LINE``, ``FILE: row
    N``), for the messages of later checks."""
    def __init__(self, records: Sequence[dict[str, Any]], where: Callable[[int], str]):
        super().__init__(records)
        self.where = where


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise DataError(f'unknown record kind {kind!r}; expected one of {KINDS}')


def check_messages(messages: Any, *, where: str) -> None:
    """Raises DataError unless ``messages`` is a well-formed chat ending with
    a non-empty assistant message."""
    shapes.check_reply(shapes.messages(messages, where=where, key='messages'), where=where,
                       key='messages')


def validate_record(record: Any, kind: str, where: str) -> dict[str, Any]:
    """Checks one record and returns its normalised form (see ``data.shapes``).

    Args:
      record: the decoded JSON object.
      kind: ``'sft'``, ``'preference'`` or ``'prompt'``.
      where: location used as the prefix of error messages (``"file:line"``).

    Returns:
      A new dict: ``{prompt, response}`` or ``{messages}`` for SFT,
      ``{prompt, chosen, rejected, margin}`` (margin a float; the three all
      text or all messages) for preference, the record with ``prompt``
      checked for prompt records.

    Raises:
      DataError: naming ``where`` and the offending key.
    """
    _check_kind(kind)
    return shapes.normalise(record, kind, where)


def validate_records(records: Sequence[Any], kind: str, where: str) -> list[dict[str, Any]]:
    """Validates a list of records; errors name ``where[index]``."""
    _check_kind(kind)
    if not records:
        raise DataError(f'{where}: no records')
    return [validate_record(r, kind, f'{where}[{i}]') for i, r in enumerate(records)]


def read_jsonl(path: str | os.PathLike[str], kind: str) -> Located:
    """Reads and validates every line of a JSONL file before returning.

    Blank lines are skipped. Errors are ``DataError("PATH:LINE: problem")``
    with 1-based line numbers, so a broken line fails before training starts.

    Args:
      path: the JSONL file.
      kind: record kind every line must satisfy.

    Returns:
      The normalised records, in file order.
    """
    _check_kind(kind)
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            # Split on '\n' only: str.splitlines would also split on U+2028
            # and friends, which JSON allows raw inside strings.
            raw_lines = f.read().removeprefix(BOM).split(b'\n')
    except FileNotFoundError:
        raise DataError(f'{path}: no such file') from None
    except IsADirectoryError:
        raise DataError(f'{path}: is a directory, not a JSONL file') from None
    out, lines = [], []
    for lineno, raw in enumerate(raw_lines, start=1):
        where = f'{path}:{lineno}'
        try:  # decoded line by line, so that a bad byte is reported where it is
            line = raw.decode('utf-8')
        except UnicodeDecodeError as e:
            raise DataError(f'{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at '
                            f'column {e.start + 1})') from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = ('; the file looks like one JSON array: use json:PATH'
                    if lineno == 1 and line.strip() == '[' else '')
            raise DataError(f'{where}: invalid JSON ({e}){hint}') from None
        out.append(validate_record(obj, kind, where))
        lines.append(lineno)
    if not out:
        raise DataError(f'{path}: empty file (no records)')
    return Located(out, lambda i: f'{path}:{lines[i]}')


def write_jsonl(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> None:
    """Writes records as one JSON object per line (UTF-8, no ASCII escaping)."""
    with open(os.fspath(path), 'w', encoding='utf-8') as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + '\n')
