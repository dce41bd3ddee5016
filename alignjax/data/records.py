"""Record kinds, their validation, and an eager JSONL reader.

Three kinds of record feed the algorithms:

* ``'sft'``: ``{"prompt": str, "response": str}`` or a chat
  ``{"messages": [{"role": ..., "content": ...}, ...]}`` whose last message
  is the assistant's response.
* ``'preference'``: ``{"prompt", "chosen", "rejected"[, "margin"]}``; the
  margin is a number (default 0.0) used by margin-aware reward losses.
* ``'prompt'``: ``{"prompt": str, ...}``; extra keys are kept (they can carry
  metadata for a gold function or a judge).

For ``'sft'`` and ``'preference'`` records, keys other than the ones above
are dropped by ``validate_record``. Files are read and checked in full before
any training starts, and every error names the file and the 1-based line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import math
import os
from typing import Any

KINDS = ("sft", "preference", "prompt")
ROLES = ("system", "user", "assistant")


_BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark, as Windows tools write it: skipped


class DataError(ValueError):
    """A dataset, record or spec is malformed; the message says where."""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise DataError(
            f"unknown record kind {kind!r}; expected one of {KINDS}")


def _text(record: Mapping[str, Any], key: str, kind: str, where: str,
          *, non_empty: bool = True) -> str:
    """Returns ``record[key]`` checked to be a (non-empty) string."""
    if key not in record:
        raise DataError(f"{where}: missing key {key!r} for a {kind} record")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(
            f"{where}: key {key!r} must be a string, got "
            f"{type(value).__name__}")
    if non_empty and not value:
        raise DataError(f"{where}: key {key!r} is an empty string")
    return value


def check_messages(messages: Any, *, where: str) -> None:
    """Raises DataError unless ``messages`` is a well-formed chat ending with
    a non-empty assistant message."""
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise DataError(f"{where}: key 'messages' must be a list of messages")
    if not messages:
        raise DataError(f"{where}: key 'messages' is an empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise DataError(f"{where}: messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(
                f"{where}: messages[{i}] has role {role!r}; expected one of "
                f"{ROLES}")
        if not isinstance(content, str):
            raise DataError(
                f"{where}: messages[{i}] key 'content' must be a string, got "
                f"{type(content).__name__}")
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last message must have role 'assistant' (it is the "
            f"response), got {messages[-1]['role']!r}")
    if not messages[-1]["content"]:
        raise DataError(f"{where}: the assistant response is empty")


def validate_record(record: Any, kind: str, where: str) -> dict[str, Any]:
    """Checks one record and returns its normalised form.

    Args:
      record: the decoded JSON object.
      kind: ``'sft'``, ``'preference'`` or ``'prompt'``.
      where: location used as the prefix of error messages (``"file:line"``).

    Returns:
      A new dict: ``{prompt, response}`` or ``{messages}`` for SFT,
      ``{prompt, chosen, rejected, margin}`` (margin a float) for preference,
      the record with ``prompt`` checked for prompt records.

    Raises:
      DataError: naming ``where`` and the offending key.
    """
    _check_kind(kind)
    if not isinstance(record, Mapping):
        raise DataError(
            f"{where}: a record must be a JSON object, got "
            f"{type(record).__name__}")
    if kind == "sft":
        if "messages" in record:
            if "prompt" in record or "response" in record:
                raise DataError(
                    f"{where}: an sft record has either 'messages' or "
                    f"'prompt'/'response', not both")
            check_messages(record["messages"], where=where)
            return {"messages": [{"role": m["role"], "content": m["content"]}
                                 for m in record["messages"]]}
        return {"prompt": _text(record, "prompt", kind, where),
                "response": _text(record, "response", kind, where)}
    if kind == "preference":
        out = {key: _text(record, key, kind, where)
               for key in ("prompt", "chosen", "rejected")}
        margin = record.get("margin", 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise DataError(
                f"{where}: key 'margin' must be a number, got "
                f"{type(margin).__name__}")
        if not math.isfinite(margin):
            raise DataError(
                f"{where}: key 'margin' must be finite, got {margin}")
        if out["chosen"] == out["rejected"]:
            # An identical pair carries no preference: every pairwise loss is
            # flat on it, so it can only be a data bug.
            raise DataError(
                f"{where}: 'chosen' and 'rejected' are identical; a preference "
                f"pair needs two different responses")
        out["margin"] = float(margin)
        return out
    out = dict(record)
    out["prompt"] = _text(record, "prompt", kind, where)
    return out


def validate_records(records: Sequence[Any], kind: str,
                     where: str) -> list[dict[str, Any]]:
    """Validates a list of records; errors name ``where[index]``."""
    _check_kind(kind)
    if not records:
        raise DataError(f"{where}: no records")
    return [validate_record(r, kind, f"{where}[{i}]")
            for i, r in enumerate(records)]


def read_jsonl(path: str | os.PathLike[str], kind: str) -> list[dict[str, Any]]:
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
        with open(path, "rb") as f:
            # Split on '\n' only: str.splitlines would also split on U+2028
            # and friends, which JSON allows raw inside strings.
            raw_lines = f.read().removeprefix(_BOM).split(b"\n")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a JSONL file") from None
    out = []
    for lineno, raw in enumerate(raw_lines, start=1):
        where = f"{path}:{lineno}"
        try:  # decoded line by line, so that a bad byte is reported where it is
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at "
                            f"column {e.start + 1})") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e})") from None
        out.append(validate_record(obj, kind, where))
    if not out:
        raise DataError(f"{path}: empty file (no records)")
    return out


def record_lines(path: str | os.PathLike[str]) -> list[int]:
    """1-based line numbers of the records of a JSONL file (its non-blank
    lines), so that later checks on record ``i`` can name its line."""
    with open(os.fspath(path), "rb") as f:
        return [i for i, raw in enumerate(f.read().split(b"\n"), start=1)
                if raw.strip()]


def write_jsonl(path: str | os.PathLike[str],
                records: Sequence[Mapping[str, Any]]) -> None:
    """Writes records as one JSON object per line (UTF-8, no ASCII escaping)."""
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
