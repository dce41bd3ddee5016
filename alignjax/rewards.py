"""Rewards as plain Python functions, weighted and mixed with the gold reward or a reward model.

`config.reward.source` is a sum of terms, each `[WEIGHT*]TERM`, joined by '+':

    gold                          a synthetic task's gold reward
    reward_model                  the reward model of config.reward.reward_from
    fn:MODULE:NAME                a Python callable found by import path

for example `fn:alignjax.data.arithmetic:exact_match+0.1*fn:alignjax.data.arithmetic:format_reward`
or `reward_model+0.5*fn:mypkg.rewards:length_ok`. A reward function takes the decoded prompts and
responses of a batch and the prompt records' other fields, as lists, and returns one finite
number a response:

    def exact_match(prompts: list[str], responses: list[str], *, answer: list[str], **fields):
        return [float(y == a) for y, a in zip(responses, answer)]

It runs in a pool of `config.reward.workers` processes (started once, 'spawn': the function's
module is imported there, never jax), the batch split among them, each call limited to
`config.reward.timeout_s` seconds. A function that raises, hangs past its timeout, returns the
wrong number of values or a value that is not a finite number stops the run with one line naming
the function, the record (its index in the batch and its prompt) and what it did; with
`config.reward.on_error='penalty'` that response (for a timeout: the call's responses) scores
`config.reward.error_penalty` instead, and `reward/errors` counts them. A raising batch is rerun
one record at a time to find the record that raises.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import multiprocessing
import weakref
from collections.abc import Callable, Sequence

import numpy as np

from alignjax.errors import ValidationError

KEY = 'config.reward.source'


class RewardFunctionError(ValidationError):
    """A reward function raised, hung or returned something other than finite numbers."""


@dataclasses.dataclass(frozen=True)
class Term:
    weight: float
    kind: str  # 'gold', 'reward_model' or 'fn'
    path: str = ''  # MODULE:NAME of a function

    @property
    def name(self) -> str:
        return self.path or self.kind


def parse(source: str) -> list[Term]:
    """The terms of a `config.reward.source` string; a ValidationError naming the bad term."""
    terms = []
    for raw in str(source).split('+'):
        text = raw.strip()
        weight = 1.0
        head, star, rest = text.partition('*')
        if star:
            try:
                weight = float(head)
            except ValueError:
                raise ValidationError(f'{KEY}: weight {head!r} of term {text!r} is not a '
                                      'number') from None
            text = rest.strip()
        if text in ('gold', 'reward_model'):
            terms.append(Term(weight, text))
        elif text.startswith('fn:') and text.count(':') == 2 and all(text.split(':')[1:]):
            terms.append(Term(weight, 'fn', text[3:]))
        else:
            raise ValidationError(f"{KEY}: term {raw.strip()!r} is not 'gold', 'reward_model' or "
                                  "'fn:MODULE:NAME' (terms joined by '+', each optionally "
                                  "'WEIGHT*TERM')")
    if [t.kind for t in terms].count('reward_model') > 1 or [t.kind for t in terms
                                                            ].count('gold') > 1:
        raise ValidationError(f'{KEY}: gold and reward_model may each appear once, got {source!r}')
    return terms


def load_function(path: str) -> Callable:
    """The callable MODULE:NAME, or a ValidationError saying what is missing."""
    module, _, name = path.partition(':')
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ValidationError(
            f'{KEY}: cannot import module {module!r} of fn:{path} ({e})') from None
    except AttributeError:
        raise ValidationError(f'{KEY}: module {module!r} has no {name!r} (fn:{path})') from None
    if not callable(fn):
        raise ValidationError(f'{KEY}: fn:{path} is a {type(fn).__name__}, not a function')
    return fn


# --- the worker side (runs in the pool's processes) ---------------------------------------

_LOADED: dict[str, Callable] = {}


def _values(out, n: int):
    """The n floats of a function's return value, or a string saying what is wrong with it."""
    try:
        values = [float(v) for v in out]
    except (TypeError, ValueError):
        return None, f'returned {_show(out)}, not a sequence of numbers'
    if len(values) != n:
        return None, f'returned {len(values)} values for {n} responses'
    return values, ''


def _show(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _call(path: str, prompts, responses, fields) -> tuple[list | None, list]:
    """(values, failures): the n scores (None when the call as a whole went wrong) and the
    (record index, what went wrong) of each failure (index -1: the whole call). A raising batch
    is rerun one record at a time, giving the values of the records that do not raise."""
    fn = _LOADED.get(path) or _LOADED.setdefault(path, load_function(path))
    try:
        return _checked(fn(list(prompts), list(responses), **fields), len(prompts))
    except Exception as e:  # pylint: disable=broad-except
        if len(prompts) == 1:
            return None, [(0, f'{type(e).__name__}: {e}')]
    values, failures = [], []
    for i in range(len(prompts)):
        one, bad = _call(path, prompts[i:i + 1], responses[i:i + 1],
                         {k: v[i:i + 1] for k, v in fields.items()})
        values.append(one[0] if one else 0.0)
        failures += [(i, what) for _, what in bad]
    return values, failures or [(-1, 'raised on the batch but on no record alone')]


def _checked(out, n: int) -> tuple[list | None, list]:
    values, problem = _values(out, n)
    if problem:
        return None, [(-1, problem)]
    return values, [(i, f'returned {v}') for i, v in enumerate(values) if not math.isfinite(v)]


def _run(path: str, prompts, responses, fields) -> tuple[list | None, list]:
    """`_call` in a worker process; what it cannot catch itself becomes a failure of the call."""
    try:
        return _call(path, prompts, responses, fields)
    except Exception as e:  # pylint: disable=broad-except
        return None, [(-1, f'{type(e).__name__}: {e}')]


# --- the run side ---------------------------------------------------------------------------


class FunctionScorer:
    """One reward function's scores [N] of `Responses`, computed in a worker pool."""
    def __init__(self, path: str, *, workers: int = 1, timeout_s: float = 60.0,
                 on_error: str = 'stop', error_penalty: float = -1.0):
        if on_error not in ('stop', 'penalty'):
            raise ValidationError(f"config.reward.on_error must be 'stop' or 'penalty', got "
                                  f'{on_error!r}')
        load_function(path)  # refuse a bad path now, in this process, before any compute
        self.path, self.name = path, f'fn:{path}'
        self.workers, self.timeout_s = max(1, int(workers)), float(timeout_s)
        self.on_error, self.error_penalty = on_error, float(error_penalty)
        self.errors = 0  # penalised responses since the last `metrics()`
        self._pool = None

    def _start(self):
        if self._pool is None:
            self._pool = multiprocessing.get_context('spawn').Pool(self.workers)
            weakref.finalize(self, self._pool.terminate)
        return self._pool

    def close(self):
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def __call__(self, responses) -> np.ndarray:
        prompts, texts = list(responses.prompt_texts), list(responses.texts)
        records = list(responses.records) or [{} for _ in texts]
        names = sorted({k for r in records for k in r} - {'prompt'})
        fields = {k: [r.get(k) for r in records] for k in names}
        n = len(texts)
        bounds = np.linspace(0, n, min(self.workers, max(n, 1)) + 1).astype(int)
        pool = self._start()
        calls = [
            (lo, hi,
             pool.apply_async(
                 _run,
                 (self.path, prompts[lo:hi], texts[lo:hi], {k: v[lo:hi]
                                                            for k, v in fields.items()})))
            for lo, hi in zip(bounds[:-1], bounds[1:])
            if hi > lo
        ]
        scores = np.zeros(n, np.float32)
        for lo, hi, call in calls:
            try:
                out = call.get(self.timeout_s)
            except multiprocessing.TimeoutError:
                self.close()  # the stuck worker dies with its pool; the next call starts anew
                self._fail(
                    lo, hi, -1, prompts, f'did not return within {self.timeout_s:g} s '
                    '(config.reward.timeout_s)', scores)
                continue
            values, failures = out
            if values is not None:
                scores[lo:hi] = values
            for index, what in failures:
                self._fail(lo, hi, index, prompts, what, scores)
        return scores

    def _fail(self, lo, hi, index, prompts, what, scores):
        """Stops the run naming the record, or gives the penalty (one record, or the whole call
        when the record is unknown)."""
        where = (f'record {lo + index} of the batch (prompt {_show(prompts[lo + index], 60)})'
                 if index >= 0 else f'records {lo}-{hi - 1} of the batch (first prompt '
                 f'{_show(prompts[lo], 60)})')
        if self.on_error == 'stop':
            raise RewardFunctionError(f'reward function fn:{self.path} {what} on {where}; '
                                      "config.reward.on_error='penalty' scores such responses "
                                      'config.reward.error_penalty instead')
        rows = slice(lo + index, lo + index + 1) if index >= 0 else slice(lo, hi)
        scores[rows] = self.error_penalty
        self.errors += rows.stop - rows.start

    def metrics(self) -> dict:
        out, self.errors = {'reward/errors': float(self.errors)}, 0
        return out


class SumScorer:
    """The weighted sum of several scorers (`Term`s), each term's mean score in the metrics
    (`reward/<term>`, before any weighting)."""
    def __init__(self, scorers: Sequence[tuple[float, object]]):
        self.scorers = list(scorers)
        self.name = '+'.join(f'{w:g}*{s.name}' if w != 1 else s.name for w, s in self.scorers)
        self._last = {}
        # Constrained RLHF's Lagrange multipliers: term i weighs w_i - multipliers[i] (the
        # trainer sets them from its checkpointed state; losses/robust.lagrange_update).
        self.multipliers = np.zeros(len(self.scorers), np.float32)

    def __call__(self, responses) -> np.ndarray:
        total = 0.0
        self._last = {}
        for i, (weight, scorer) in enumerate(self.scorers):
            s = np.asarray(scorer(responses), np.float32)
            self._last[f'reward/{scorer.name}'] = float(np.mean(s)) if s.size else 0.0
            total = total + (weight - self.multipliers[i]) * s
        return np.asarray(total, np.float32)

    def metrics(self) -> dict:
        """Each term's mean, the functions' errors summed, and the terms' own figures."""
        out, errors = dict(self._last), []
        for _, s in self.scorers:
            own = s.metrics() if hasattr(s, 'metrics') else {}
            if 'reward/errors' in own:
                errors.append(own.pop('reward/errors'))
            out.update(own)
        if errors:
            out['reward/errors'] = float(sum(errors))
        return out

    def close(self):
        for _, s in self.scorers:
            getattr(s, 'close', lambda: None)()
