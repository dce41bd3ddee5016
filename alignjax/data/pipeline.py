"""From a data spec to batches of token arrays, addressable by step.

Specs: ``jsonl:PATH``, ``json:PATH`` (an array), ``parquet:PATH_OR_GLOB``,
``hf:DIR[:SPLIT]`` (a ``datasets.save_to_disk`` folder), ``tfds:NAME[:SPLIT]``,
``synthetic:TASK``. Records may come in any shape of ``data.shapes``.

Batch layout (int32 tokens; prompts left-padded so that sampling starts at
the same position for every row; responses right-padded and ended by EOS):

* sft: ``prompt, prompt_mask [P]``, ``response, response_mask [R]``.
* preference: ``prompt, prompt_mask [P]``, ``chosen, chosen_mask [R]``,
  ``rejected, rejected_mask [R]``, ``margin`` (float32 scalar).
* prompt: ``prompt, prompt_mask [P]``, ``index`` (int32, the record's
  position in ``records``, so a gold function can look the record up).

``batch_stream`` is a grain ``MapDataset``: ``stream[step]`` is this
process's rows of global batch ``step``. Resuming a run only needs the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import functools
import os
from typing import Any

from absl import logging
import grain
import numpy as np

from alignjax import specs
from alignjax.data import chat as chat_lib
from alignjax.data import records as records_lib
from alignjax.data import sources
from alignjax.data import tasks
from alignjax.data import tfds_builder
from alignjax.data.tokenizer import ByteTokenizer

DataError = records_lib.DataError
SPECS = ('jsonl:PATH, json:PATH, parquet:PATH_OR_GLOB, hf:DIR[:SPLIT] '
         '(datasets.save_to_disk), tfds:NAME[:SPLIT], synthetic:TASK')
DEFAULT_SYNTHETIC_EXAMPLES = 4096
Records = Sequence[Mapping[str, Any]]
TokenizeFn = Callable[[Mapping[str, Any], int], dict[str, np.ndarray]]


def load_records(
    spec: str,
    kind: str,
    *,
    split: str = 'train',
    num_examples: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> Records:
    """Loads validated records of ``kind`` from a data spec.

    Args:
      spec: ``jsonl:PATH``, ``json:PATH``, ``parquet:PATH_OR_GLOB`` or
        ``hf:DIR[:SPLIT]`` (read and validated eagerly), ``tfds:NAME[:SPLIT]``
        (random-access source; the split in the spec wins over ``split``) or
        ``synthetic:TASK`` (generated from ``seed``).
      kind: ``'sft'``, ``'preference'`` or ``'prompt'``.
      split: split for ``tfds`` specs without one, and ``'train'``/``'eval'``
        prompts for synthetic prompt records.
      num_examples: keep the first ``num_examples`` records, logged when it
        cuts; ``0`` or ``None``: all of a file's records, 4096 synthetic ones.
      seed: seed of synthetic generation.
      data_dir: TFDS data dir (default ``$TFDS_DATA_DIR``).

    Returns:
      A list of record dicts, or a random-access ``TfdsRecordSource``.
    """
    source = specs.Data.parse(spec)
    prefix, rest = source.scheme, source.rest
    if not prefix or not rest:
        raise DataError(f'data spec {spec!r} must look like PREFIX:VALUE ({SPECS})')
    if num_examples is not None and num_examples < 0:
        raise DataError(f'{spec}: num_examples must be >= 0 (0: all), got {num_examples}')
    readers = {
        'jsonl': records_lib.read_jsonl, 'json': sources.read_json, 'parquet': sources.read_parquet
    }
    if prefix in readers or prefix == 'hf':
        if prefix == 'hf':
            directory, _, spec_split = rest.rpartition(':') if _has_split(rest) \
                else (rest, '', '')
            records = sources.read_saved_dataset(directory, kind, spec_split or split)
        else:
            records = readers[prefix](rest, kind)
        if num_examples and len(records) > num_examples:
            logging.warning(
                '%s: training on the first %d of its %d records '
                '(config.data.num_examples=%d; 0 reads all)', spec, num_examples, len(records),
                num_examples)
            records = records_lib.Located(records[:num_examples], records.where)
        return records
    if prefix == 'tfds':
        name, _, spec_split = rest.partition(':')
        split = spec_split or split
        if num_examples:
            split = f'{split}[:{num_examples}]'
        return tfds_builder.open_tfds_source(name, split=split, kind=kind, data_dir=data_dir)
    if prefix == 'synthetic':
        try:
            task = tasks.get_task(rest)
        except ValueError as e:
            raise DataError(f'{spec}: {e}') from None
        n = num_examples or DEFAULT_SYNTHETIC_EXAMPLES
        if kind == 'prompt':
            return task.prompt_records(n, seed=seed, split=split)
        if split != 'train':
            raise DataError(f"{spec}: synthetic {kind} records exist only for "
                            f"split 'train', got {split!r}")
        if kind == 'sft':
            return task.sft_records(n, seed=seed)
        if kind == 'preference':
            return task.preference_records(n, seed=seed)
        raise DataError(f'{spec}: unknown record kind {kind!r}')
    raise DataError(f'data spec {spec!r}: unknown prefix {prefix!r}; expected '
                    f'one of {SPECS}')


def _has_split(rest: str) -> bool:
    """Whether ``hf:DIR:SPLIT`` names a split: the part after the last colon is
    not itself a path (``hf:C:/data`` on Windows has none)."""
    head, sep, tail = rest.rpartition(':')
    return bool(sep and head and tail and '/' not in tail and '\\' not in tail)


# --- tokenisation ----------------------------------------------------------


def encode_prompt(
    tok: ByteTokenizer,
    text: str,
    max_len: int,
    *,
    truncation: str = 'left',
    add_bos: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids and mask, both int32[max_len].

    Args:
      tok: tokenizer.
      text: prompt text.
      max_len: prompt length P.
      truncation: ``'left'`` keeps the last ``max_len`` tokens (the end of a
        prompt is what the response continues); ``'error'`` raises.
      add_bos: put BOS first (kept when truncating).
    """
    ids = tok.encode(text)
    budget = max_len - 1 if add_bos else max_len
    if len(ids) > budget:
        if truncation == 'error':
            raise DataError(f'prompt of {len(ids)} tokens exceeds max_len '
                            f'{max_len}: {text[:60]!r}...')
        if truncation != 'left':
            raise DataError(f"prompt truncation must be 'left' or 'error', "
                            f"got {truncation!r}")
        ids = ids[len(ids) - budget:] if budget > 0 else []
    if add_bos:
        ids = [tok.bos_id] + ids
    out = np.full(max_len, tok.pad_id, dtype=np.int32)
    mask = np.zeros(max_len, dtype=np.int32)
    if ids:
        out[max_len - len(ids):] = ids
        mask[max_len - len(ids):] = 1
    return out, mask


def encode_response(
    tok: ByteTokenizer,
    text: str,
    max_len: int,
    *,
    truncation: str = 'right',
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded response ids (text then EOS) and mask, int32[max_len].

    A response too long for ``max_len`` tokens plus EOS is cut on the right
    and has NO EOS, so the model sees that it was cut (``truncation='right'``);
    ``truncation='error'`` raises instead.
    """
    ids = tok.encode(text) + [tok.eos_id]
    if len(ids) > max_len:
        if truncation == 'error':
            raise DataError(f'response of {len(ids)} tokens (with EOS) exceeds '
                            f'max_len {max_len}: {text[:60]!r}...')
        if truncation != 'right':
            raise DataError(f"response truncation must be 'right' or 'error', "
                            f"got {truncation!r}")
        ids = ids[:max_len]
    out = np.full(max_len, tok.pad_id, dtype=np.int32)
    mask = np.zeros(max_len, dtype=np.int32)
    out[:len(ids)] = ids
    mask[:len(ids)] = 1
    return out, mask


def texts(record: Mapping[str, Any], kind: str, chat: chat_lib.Chat, *,
          with_replies: bool = True) -> tuple[str, bool, dict[str, str]]:
    """``(prompt text, whether BOS goes first, {reply key: text})`` of a record
    as ``chat`` renders it (the reply keys: ``response``, or ``chosen`` and
    ``rejected``; none for prompt records or without ``with_replies``)."""
    tools = record.get('tools')
    if kind == 'sft' and 'messages' in record:
        prompt, replies = record['messages'][:-1], {'response': record['messages'][-1:]}
    elif kind == 'sft':
        prompt, replies = record['prompt'], {'response': record['response']}
    elif kind == 'preference':
        prompt = record['prompt']
        replies = {'chosen': record['chosen'], 'rejected': record['rejected']}
    elif kind == 'prompt':
        prompt, replies = record['prompt'], {}
    else:
        raise DataError(f'unknown record kind {kind!r}')
    prompt_text, add_bos, reply_texts = chat.split(prompt,
                                                   list(replies.values()) if with_replies else [],
                                                   tools)
    return prompt_text, add_bos, dict(zip(replies, reply_texts))


def prompt_ids(record: Mapping[str, Any], kind: str, tok, chat: chat_lib.Chat) -> list[int]:
    """The ids of a record's prompt before any truncation (BOS included)."""
    text, add_bos, _ = texts(record, kind, chat, with_replies=False)
    return [tok.bos_id] * add_bos + tok.encode(text)


def _assistant_turns(record: Mapping[str, Any], tok, chat: chat_lib.Chat, *, max_prompt_len: int,
                     max_response_len: int, prompt_truncation: str) -> dict[str, np.ndarray]:
    """An SFT conversation for ``config.data.sft_turns='all'``: the prompt is
    the context before the first assistant turn, the response everything after
    it, and ``loss_mask`` marks the tokens of every assistant turn."""
    pieces = chat.assistant_segments(record['messages'], record.get('tools'))
    add_bos = chat.template is None and chat.add_bos
    prompt, mask = encode_prompt(tok, pieces[0][0], max_prompt_len, truncation=prompt_truncation,
                                 add_bos=add_bos)
    ids, weights = [], []
    for text, trained in pieces[1:]:
        piece = tok.encode(text)
        ids += piece
        weights += [int(trained)] * len(piece)
    if chat.template is None:  # the plain format writes no EOS: end the last turn with one
        ids, weights = ids + [tok.eos_id], weights + [1]
    ids, weights = ids[:max_response_len], weights[:max_response_len]
    out = {'prompt': prompt, 'prompt_mask': mask}
    for key, values, fill in (('response', ids, tok.pad_id), ('response_mask', [1] * len(ids), 0),
                              ('loss_mask', weights, 0)):
        row = np.full(max_response_len, fill, dtype=np.int32)
        row[:len(values)] = values
        out[key] = row
    return out


def _tokenize(record: Mapping[str, Any], index: int, *, kind: str, tok: ByteTokenizer,
              chat: chat_lib.Chat, max_prompt_len: int, max_response_len: int,
              prompt_truncation: str, response_truncation: str,
              all_turns: bool) -> dict[str, np.ndarray]:
    if all_turns:
        if 'messages' in record:
            return _assistant_turns(record, tok, chat, max_prompt_len=max_prompt_len,
                                    max_response_len=max_response_len,
                                    prompt_truncation=prompt_truncation)
        out = _tokenize(record, index, kind=kind, tok=tok, chat=chat, max_prompt_len=max_prompt_len,
                        max_response_len=max_response_len, prompt_truncation=prompt_truncation,
                        response_truncation=response_truncation, all_turns=False)
        return {**out, 'loss_mask': out['response_mask']}
    prompt_text, add_bos, replies = texts(record, kind, chat)
    out = {}
    out['prompt'], out['prompt_mask'] = encode_prompt(tok, prompt_text, max_prompt_len,
                                                      truncation=prompt_truncation, add_bos=add_bos)
    for key, text in replies.items():
        out[key], out[f'{key}_mask'] = encode_response(tok, text, max_response_len,
                                                       truncation=response_truncation)
    if kind == 'preference':
        out['margin'] = np.float32(record.get('margin', 0.0))
    elif kind == 'prompt':
        out['index'] = np.int32(index)
    return out


def make_tokenize_fn(
    kind: str,
    tok: ByteTokenizer,
    *,
    max_prompt_len: int,
    max_response_len: int = 0,
    prompt_truncation: str = 'left',
    response_truncation: str = 'right',
    chat_template: str = 'auto',
    sft_turns: str = 'last',
) -> TokenizeFn:
    """Returns ``fn(record, index) -> dict of arrays`` in the batch layout of
    ``kind`` (see the module docstring).

    ``chat_template`` (``config.data.chat_template``: ``auto``, ``messages``,
    ``none`` or a Jinja file) says which records go through a chat template,
    as ``data.chat`` describes; BOS is put before text that did not, where the
    tokenizer itself would (``tok.add_bos``: Llama and Gemma do, Qwen and the
    byte tokenizer do not), and never twice.

    ``sft_turns`` (``config.data.sft_turns``, SFT only): ``'last'`` trains on
    a conversation's final reply; ``'all'`` on every assistant turn, marked by
    a ``loss_mask`` [R] (the template's ``{% generation %}`` spans, or each
    assistant message's own text), the other turns being context.
    """
    if sft_turns not in ('last', 'all'):
        raise DataError(f"config.data.sft_turns={sft_turns!r}: expected 'last' or 'all'")
    if kind not in records_lib.KINDS:
        raise DataError(f'unknown record kind {kind!r}')
    if kind != 'prompt' and max_response_len <= 0:
        raise DataError(f'{kind} records need max_response_len > 0')
    return functools.partial(_tokenize, kind=kind, tok=tok,
                             chat=chat_lib.Chat.of(tok,
                                                   chat_template), max_prompt_len=max_prompt_len,
                             max_response_len=max_response_len, prompt_truncation=prompt_truncation,
                             response_truncation=response_truncation, all_turns=kind == 'sft'
                             and sft_turns == 'all')


# --- batching --------------------------------------------------------------


def _shuffle_seed(seed: int) -> int:
    # Grain shuffles epoch e with seed + e, so seeds 0 and 1 would share
    # permutations one epoch apart; hashing the seed first avoids that.
    return int(np.random.SeedSequence(int(seed)).generate_state(1)[0])


def batch_stream(
    records: Records,
    *,
    tokenize_fn: TokenizeFn,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Infinite, random-access stream of this process's batches.

    Pipeline: record indices -> shuffle (a new deterministic permutation per
    epoch) -> repeat forever -> tokenize -> batch. Global batch ``s`` holds
    rows ``s * B .. (s + 1) * B - 1`` of the shuffled stream (a batch may
    straddle two epochs); ``stream[s]`` is its rows ``process_index * L ..
    (process_index + 1) * L - 1`` with ``L = B // process_count``, as a dict
    of stacked NumPy arrays. Only this process's rows are tokenized.

    Args:
      records: a list of records or any random-access source.
      tokenize_fn: ``fn(record, index) -> dict of arrays``, e.g. from
        ``make_tokenize_fn``.
      global_batch_size: rows per step over all processes.
      seed: shuffle seed.
      process_index: this process (``jax.process_index()``).
      process_count: number of processes (``jax.process_count()``).

    Returns:
      A grain ``MapDataset``: index it by step, or iterate/slice it
      (``stream[start:]``) to continue from a step.
    """
    if len(records) == 0:  # pylint: disable=g-explicit-length-test
        raise DataError('batch_stream: no records')
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise DataError(f'global_batch_size {global_batch_size} must be a '
                        f'positive multiple of process_count {process_count}')
    if not 0 <= process_index < process_count:
        raise DataError(f'process_index {process_index} not in '
                        f'[0, {process_count})')
    local = global_batch_size // process_count
    ds = (grain.MapDataset.range(len(records)).shuffle(
        seed=_shuffle_seed(seed)).repeat().map(lambda i: tokenize_fn(records[i], i)).batch(local))
    # Batch j of `local` rows is process j % P's part of global batch j // P.
    return ds[process_index::process_count]
