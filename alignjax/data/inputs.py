"""A run's data from its config: the tokenizer, the records (validated, with the long-prompt
policy applied), the held-out split and the batch streams.

What the trainers call to assemble their inputs; `alignjax.experiment_lib` keeps what experiment
files call. Every function takes the run's config and reads `config.tokenizer`, `config.data` and
`config.seed` from it.
"""

from __future__ import annotations

from absl import logging
import jax
import ml_collections
import numpy as np

from alignjax import specs
from alignjax.data import lengths
from alignjax.data import pipeline
from alignjax.data import synthetic
from alignjax.data import tasks
from alignjax.data.tokenizer import ByteTokenizer
from alignjax.interop import tokenizer as hf_tokenizer


def make_tokenizer(c: ml_collections.ConfigDict):
    """The tokenizer named by config.tokenizer: 'byte' (the synthetic tasks) or 'hf:DIR'."""
    if c.tokenizer == 'byte':
        return ByteTokenizer()
    directory = specs.hf_dir(c.tokenizer)
    if directory is None:
        raise ValueError(f"config.tokenizer={c.tokenizer!r}: expected 'byte' or 'hf:DIR'")
    tok = hf_tokenizer.load_tokenizer(directory, **c.special_tokens.to_dict())
    if tok.vocab_size > c.model.vocab_size:
        raise ValueError(f'config.tokenizer={c.tokenizer!r} produces {tok.vocab_size} ids but '
                         f'config.model.vocab_size={c.model.vocab_size}')
    return tok


def synthetic_task(c: ml_collections.ConfigDict):
    """The synthetic task behind config.data.train, or None for real data."""
    name = specs.Data.parse(c.data.train).synthetic_task
    return None if name is None else tasks.get_task(name)


def load_records(c: ml_collections.ConfigDict, kind: str, spec: str, *, with_counts=False,
                 **load_kw):
    """Records of data spec `spec` with config.data.truncation's policy for long prompts applied
    (see `data.lengths`), so that validation and training see the same records. Synthetic
    records are generated once for both (they are a pure function of the arguments)."""
    key = (spec, kind, c.tokenizer, c.data.max_prompt_len, c.data.max_response_len,
           c.data.truncation, c.data.chat_template, tuple(sorted(load_kw.items())))
    synthetic_source = specs.Data.parse(spec).synthetic_task is not None
    if synthetic_source and key in _SYNTHETIC:
        records, counts = _SYNTHETIC[key]
        return (records, counts) if with_counts else records
    records = pipeline.load_records(spec, kind, **load_kw)
    locate = getattr(records, 'where', None)  # a file's records know their lines or rows
    records, counts = lengths.apply_prompt_policy(
        records, kind, make_tokenizer(c), max_prompt_len=c.data.max_prompt_len,
        policy=c.data.truncation, source=spec, locate=locate,
        max_response_len=0 if kind == 'prompt' else c.data.max_response_len,
        chat_template=c.data.chat_template)
    if counts['too_long']:
        logging.warning(
            '%s: %d of %d prompts longer than config.data.max_prompt_len=%d: '
            '%d truncated, %d skipped (config.data.truncation=%r)', spec, counts['too_long'],
            counts['records'], c.data.max_prompt_len, counts['truncated'], counts['skipped'],
            c.data.truncation)
    if counts['long_replies']:
        logging.warning(
            '%s: %d of %d records have a reply longer than '
            'config.data.max_response_len=%d tokens (EOS included): cut on the right, '
            'without EOS', spec, counts['long_replies'], counts['records'], c.data.max_response_len)
    if synthetic_source:
        if len(_SYNTHETIC) >= 8:
            _SYNTHETIC.clear()
        _SYNTHETIC[key] = (records, counts)
    return (records, counts) if with_counts else records


_SYNTHETIC = {}  # the last few synthetic datasets of `load_records`


def train_eval_records(c: ml_collections.ConfigDict, kind: str):
    """(train, held-out) records of `kind` for config.data.train / config.data.eval.

    Held-out records come from config.data.eval when set; synthetic tasks draw fresh ones from
    another seed; other sources keep back the last config.data.eval_fraction of the records.
    `config.data.flip_fraction` (synthetic preference records only; absent or 0: none) swaps
    chosen and rejected in a seeded fraction of the training records, never the held-out ones
    (`synthetic.flip_labels`): label noise whose effect a held-out evaluation measures.
    """
    d = c.data
    train = load_records(c, kind, d.train, num_examples=d.num_examples, seed=c.seed)
    flip = d.get('flip_fraction', 0.0)
    if flip:
        if kind != 'preference' or specs.Data.parse(d.train).synthetic_task is None:
            raise ValueError(f'config.data.flip_fraction={flip} injects label noise into '
                             f'synthetic preference records only; config.data.train='
                             f'{d.train!r} ({kind} records)')
        train = synthetic.flip_labels(train, flip, seed=c.seed)
    if d.eval:
        return train, load_records(c, kind, d.eval, split='eval', seed=c.seed)
    if specs.Data.parse(d.train).synthetic_task is not None:
        held_out = load_records(c, kind, d.train, num_examples=d.num_eval_examples,
                                seed=c.seed + 1_000_003)
        return train, held_out
    n_eval = max(1, int(len(train) * d.eval_fraction))
    if len(train) <= n_eval:
        raise ValueError(f'config.data.train={d.train!r} has {len(train)} records: too few to '
                         f'hold out config.data.eval_fraction={d.eval_fraction}')
    return [train[i] for i in range(len(train) - n_eval)], \
        [train[i] for i in range(len(train) - n_eval, len(train))]


def prompt_truncation(d: ml_collections.ConfigDict) -> str:
    """What tokenisation does with a long prompt: the records were already filtered by
    `load_records`, so 'skip' leaves none and 'left' / 'error' apply as they are."""
    return 'error' if d.truncation == 'error' else 'left'


def make_stream(c: ml_collections.ConfigDict, kind: str, records, tok, *, with_index=False):
    """Random-access batch stream (`stream[step]`) of this process's rows, tokenised."""
    d = c.data
    tokenize = pipeline.make_tokenize_fn(kind, tok, max_prompt_len=d.max_prompt_len,
                                         max_response_len=d.max_response_len,
                                         prompt_truncation=prompt_truncation(d),
                                         chat_template=d.chat_template)
    if with_index:
        base = tokenize
        tokenize = lambda record, i: {**base(record, i), 'index': np.int32(i)}
    return pipeline.batch_stream(records, tokenize_fn=tokenize, global_batch_size=d.batch_size,
                                 seed=c.seed, process_index=jax.process_index(),
                                 process_count=jax.process_count())


def fixed_batches(c: ml_collections.ConfigDict, kind: str, records, tok, *, batch_size: int):
    """Every record once, in order, as batches of `batch_size` rows (the last one padded by
    repeating its final record); yields (batch, number of real rows). For evaluation passes."""
    d = c.data
    tokenize = pipeline.make_tokenize_fn(kind, tok, max_prompt_len=d.max_prompt_len,
                                         max_response_len=d.max_response_len,
                                         prompt_truncation=prompt_truncation(d),
                                         chat_template=d.chat_template)
    for start in range(0, len(records), batch_size):
        idx = list(range(start, min(start + batch_size, len(records))))
        real = len(idx)
        idx += [idx[-1]] * (batch_size - real)
        rows = [{**tokenize(records[i], i), 'index': np.int32(i)} for i in idx]
        yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}, real
