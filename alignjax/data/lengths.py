"""The policy for prompts longer than ``config.data.max_prompt_len``, applied before training.

``config.data.truncation`` chooses it:

* ``'left'`` (truncate): keep the last ``max_prompt_len`` tokens, the part a response continues;
* ``'skip'``: drop the record;
* ``'error'``: refuse the dataset, naming the first long record's file and line.

Why a separate pass over the records rather than a check inside tokenisation: tokenisation is lazy
(grain maps it per batch), so an error there would stop a run at whatever step first met the
record, and a skipped record would change the batch layout mid-epoch. Decided up front, a run
either refuses its data before any compute or trains on a fixed, logged set of records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alignjax.data import chat as chat_lib
from alignjax.data import pipeline
from alignjax.data.records import DataError

POLICIES = ('left', 'skip', 'error')


class Subset(Sequence):
    """A random-access view of some records of a source (a TFDS source is not copied)."""
    def __init__(self, source, indices: Sequence[int]):
        self._source, self._indices = source, list(indices)

    def __len__(self):
        return len(self._indices)

    def __getitem__(self, i):
        return self._source[self._indices[i]]


def token_counts(record: Mapping[str, Any], kind: str, tok,
                 chat: chat_lib.Chat) -> tuple[int, list[int]]:
    """Tokens of a record's prompt as the batch will hold it (chat template, BOS included), and
    of each reply with its EOS."""
    text, add_bos, replies = pipeline.texts(record, kind, chat)
    return (len(tok.encode(text)) + add_bos,
            [len(tok.encode(reply)) + 1 for reply in replies.values()])


def apply_prompt_policy(records, kind: str, tok, *, max_prompt_len: int, policy: str, source: str,
                        locate: Callable[[int], str] | None = None, max_response_len: int = 0,
                        chat_template: str = 'auto'):
    """Returns ``(records, counts)`` with ``policy`` applied to prompts over the budget.

    Args:
      records: a list or random-access source of validated records.
      kind: ``'sft'``, ``'preference'`` or ``'prompt'``.
      tok: the run's tokenizer.
      max_prompt_len: the prompt budget P in tokens.
      policy: one of ``POLICIES``.
      source: the data spec, for messages (``jsonl:PATH``).
      locate: ``i -> 'PATH:LINE'`` of record ``i``, for the ``'error'`` message.
      max_response_len: the reply budget R (0: not counted); replies longer are cut on the
        right by tokenisation, and counted here.
      chat_template: ``config.data.chat_template`` (see ``data.chat``).

    Returns:
      The records to train on (the same object unless some were skipped) and
      ``{'records', 'too_long', 'truncated', 'skipped', 'kept', 'long_replies'}`` counts
      (``long_replies``: records with a reply over R tokens, among those kept).
    """
    if policy not in POLICIES:
        raise DataError(f'config.data.truncation={policy!r}: expected one of {POLICIES} '
                        f'(truncate on the left, skip the record, or refuse the data)')
    chat = chat_lib.Chat.of(tok, chat_template)
    long_ones, long_replies = [], 0
    for i in range(len(records)):
        try:
            n, replies = token_counts(records[i], kind, tok, chat)
        except DataError as e:  # a template that cannot render this record
            where = locate(i) if locate else f'{source}[{i}]'
            raise DataError(f'{where}: {e}') from None
        if max_response_len and max(replies,
                                    default=0) > max_response_len and (n <= max_prompt_len
                                                                       or policy == 'left'):
            long_replies += 1
        if n > max_prompt_len:
            if policy == 'error':
                where = locate(i) if locate else f'{source}[{i}]'
                raise DataError(f'{where}: prompt of {n} tokens exceeds config.data.max_prompt_len'
                                f"={max_prompt_len} (config.data.truncation='error'; 'left' "
                                f"truncates, 'skip' drops such records)")
            long_ones.append(i)
    counts = {
        'records': len(records), 'too_long': len(long_ones),
        'truncated': len(long_ones) if policy == 'left' else 0,
        'skipped': len(long_ones) if policy == 'skip' else 0, 'long_replies': long_replies
    }
    if policy == 'skip' and long_ones:
        dropped = set(long_ones)
        records = Subset(records, [i for i in range(len(records)) if i not in dropped])
    counts['kept'] = len(records)
    if not counts['kept']:
        raise DataError(f"{source}: no records left after config.data.truncation='skip' dropped "
                        f'all {counts["skipped"]} (every prompt is longer than '
                        f'config.data.max_prompt_len={max_prompt_len})')
    return records, counts
