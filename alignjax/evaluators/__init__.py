"""Evaluators: what a run measures beside its loss, declared in config and run by the loop.

An `Evaluator` is a name, a function `(model, step) -> {figure: value}`, its own period and
(optionally) what it reports in summary.json at the end. Each trainer offers the evaluators that
make sense for it, built lazily (`select`); `config.eval.evaluators` picks among them, each entry
`name` (every `config.eval_every` steps) or `name:N` (every N steps; 0: only at the end). Empty
(the default) runs all the trainer's evaluators. The loop writes the figures of the evaluators due at a
step as one `eval/` row of metrics.jsonl and puts every evaluator's final figures in
summary.json.

The evaluators, one small module each:

- `heldout_preference`: implicit rewards, their accuracy and the ranking accuracy of the policy
  and the reference on held-out preference pairs (DPO family);
- `gold`: the synthetic task's gold evaluation of the policy against its reference (gold reward,
  win rate, KL; exploitability on the intransitive task; the proxy reward when a reward model
  scores);
- `reward_accuracy`: a reward model's held-out accuracy and calibration, per member;
- `preference_accuracy`: a preference model's held-out accuracy and calibration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

EvalFn = Callable[..., dict]


@dataclasses.dataclass(frozen=True)
class Evaluator:
    name: str
    fn: EvalFn  # (model, step) -> figures
    every: int = 0  # steps between runs; 0: only at the end
    final: Callable[..., dict] | None = None  # (model) -> summary figures; default fn at the end

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step != total_steps

    def summary(self, model, step: int) -> dict:
        return self.final(model) if self.final is not None else self.fn(model, step)


def parse(entry: str, eval_every: int) -> tuple[str, int]:
    """'name' -> (name, eval_every); 'name:N' -> (name, N)."""
    name, sep, every = str(entry).partition(':')
    if not sep:
        return name.strip(), eval_every
    try:
        steps = int(every)
    except ValueError:
        steps = -1
    if steps < 0:
        raise ValueError(f'config.eval.evaluators: {entry!r}: the period after ":" must be a '
                         'number of steps >= 0')
    return name.strip(), steps


def select(
        config,
        available: Mapping[str, Callable[[], EvalFn | tuple[EvalFn, Callable]]]) -> list[Evaluator]:
    """The evaluators `config.eval.evaluators` names (all of them when empty) among a trainer's
    `available` ones: name -> factory returning `fn`, or `(fn, final)`. Factories run only when
    selected."""
    entries = tuple(config.get('eval', {}).get('evaluators', ()) or ()) or tuple(available)
    out = []
    for entry in entries:
        name, every = parse(entry, config.get('eval_every', 0))
        if name not in available:
            raise ValueError(f'config.eval.evaluators: {name!r} is not an evaluator of '
                             f'{config.algo}; known here: {sorted(available)}')
        made = available[name]()
        fn, final = made if isinstance(made, tuple) else (made, None)
        out.append(Evaluator(name, fn, every, final))
    return out


def figures_due(evaluators: Sequence[Evaluator], model, step: int, total_steps: int) -> dict:
    """The figures of every evaluator due at `step`, in declaration order, as one dict."""
    out = {}
    for ev in evaluators:
        if ev.due(step, total_steps):
            out.update(ev.fn(model, step))
    return out


def summary(evaluators: Sequence[Evaluator], model, step: int) -> dict:
    out = {}
    for ev in evaluators:
        out.update(ev.summary(model, step))
    return out
