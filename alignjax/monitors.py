"""Over-optimisation monitors: figures that warn of reward hacking as it happens, thresholds
that fire on them, and a plot.

The figures are logged with the other metrics wherever they can be computed:

- rollout/topk_mass, rollout/topk_entropy (and eval/ ones of the policy's and the reference's
  samples): the top-k mass and the entropy of the renormalised top-k of the policy's next-token
  distribution on its own samples (`scoring.response_topk_stats`; Shi et al. 2024,
  "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms": falling top-k
  entropy and rising top-k mass warn early); config.monitors.top_k > 0 turns them on;
- eval/implicit_reward_{mean,max,argmax_position} of DPO-family policies: the per-token
  implicit reward beta * log(pi / pi_ref) ("From r to Q*", Rafailov et al. 2024) on the
  policy's samples, its mean and maximum per response and where in the response (0 first
  token, 1 last) the maximum sits (`implicit_reward_summary`);
- reward/ensemble_std: the spread of a reward ensemble's members on the policy's samples;
  rollout/proxy_gold_gap: the learned reward minus the gold reward, where a gold reward exists;
- eval/response_length, eos_rate and their _ref: length and EOS rate against the reference's;
- rollout/kl_to_ref and monitor/kl_spike: the KL to the reference over the median of its last
  KL_WINDOW logged values, floored at KL_FLOOR (derived here, from the logged rows).

config.monitors.thresholds names any logged figure with a bound, a number or one relative to the
figure's first logged value, e.g. 'rollout/topk_entropy<first*0.8,reward/ensemble_std>first*1.5,
rollout/proxy_gold_gap>first+0.5,monitor/kl_spike>3'. A figure that crosses its bound fires once: a warning line naming it, the step and the value; config.monitors.action
'checkpoint' also saves a checkpoint there, 'stop' saves and stops the run. summary.json lists
`monitors_fired` ({figure: first step}), and `monitors.png` in the workdir plots every monitored
figure (and the gold reward, where known) on one step axis with the firings marked.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from alignjax import metrics as metrics_lib
from alignjax.errors import ValidationError

KEY = 'config.monitors.thresholds'
ACTIONS = ('warn', 'checkpoint', 'stop')
GOLD_KEYS = ('rollout/gold_reward', 'eval/gold_reward')
# monitor/kl_spike: the KL over the median of its last KL_WINDOW logged values, floored at
# KL_FLOOR nats (the first steps' KL of ~0 would make any growth a spike).
KL_WINDOW, KL_FLOOR = 10, 0.5


def implicit_reward_summary(logp, ref_logp, mask, *, beta: float) -> dict[str, float]:
    """Per-token implicit reward r_t = beta * (log pi(y_t) - log pi_ref(y_t)) of responses [N, R]
    summarised per response and averaged over responses: mean over its tokens, maximum, and the
    maximum's relative position (t / (len - 1); 0 for one-token responses)."""
    mask = np.asarray(mask) > 0
    r = beta * (np.asarray(logp, np.float64) - np.asarray(ref_logp, np.float64))
    lengths = mask.sum(axis=1)
    keep = lengths > 0
    r, mask, lengths = r[keep], mask[keep], lengths[keep]
    if not len(r):
        return {}
    masked = np.where(mask, r, -np.inf)
    at = masked.argmax(axis=1)
    return {
        'implicit_reward_mean': float(np.mean(np.sum(np.where(mask, r, 0.0), axis=1) / lengths)),
        'implicit_reward_max': float(np.mean(masked.max(axis=1))),
        'implicit_reward_argmax_position': float(np.mean(at / np.maximum(lengths - 1, 1))),
    }


@dataclasses.dataclass(frozen=True)
class Threshold:
    """NAME above (or below) a bound: a number, or relative to the figure's first logged value,
    'first*F' (F times it) or 'first+D' / 'first-D' (D more or less)."""
    name: str
    above: bool  # fires when the value exceeds the bound (else when it falls below)
    bound: float
    relative: str = ''  # '', '*' or '+'

    def resolve(self, first: float) -> float:
        if self.relative == '*':
            return first * self.bound
        if self.relative == '+':
            return first + self.bound
        return self.bound

    def __str__(self) -> str:
        op = '>' if self.above else '<'
        if self.relative == '*':
            return f'{self.name} {op} first*{self.bound:g}'
        if self.relative == '+':
            return f'{self.name} {op} first{self.bound:+g}'
        return f'{self.name} {op} {self.bound:g}'


_NUMBER = r'[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|inf)'


def parse(spec: str) -> list[Threshold]:
    """'NAME>VALUE,NAME<first*0.8,NAME>first+0.5' -> Thresholds; a ValidationError naming the
    bad item."""
    out = []
    for item in filter(None, (x.strip() for x in str(spec or '').split(','))):
        m = re.fullmatch(rf'([\w/@.\-]+)\s*([<>])\s*(first\s*\*\s*|first\s*(?=[-+]))?({_NUMBER})',
                         item)
        if not m:
            raise ValidationError(f"{KEY}: {item!r} is not 'NAME>VALUE' or 'NAME<VALUE' (VALUE a "
                                  "number, 'first*F' or 'first+D'; e.g. "
                                  "'rollout/topk_entropy<first*0.8,monitor/kl_spike>3')")
        relative = '' if not m.group(3) else ('*' if '*' in m.group(3) else '+')
        out.append(Threshold(m.group(1), m.group(2) == '>', float(m.group(4)), relative))
    return out


class Monitors:
    """The thresholds of a run, checked against each logged row (`check`), with what fired."""
    def __init__(self, thresholds: list[Threshold], *, action: str = 'warn', log=print):
        if action not in ACTIONS:
            raise ValidationError(f'config.monitors.action must be one of {ACTIONS}, '
                                  f'got {action!r}')
        self.thresholds, self.action, self.log = thresholds, action, log
        self.fired: dict[str, int] = {}
        self.first: dict[str, float] = {}  # each monitored figure's first logged value
        self._kl: list[float] = []

    @classmethod
    def from_config(cls, config, log=print) -> Monitors:
        m = config.get('monitors', {})
        return cls(parse(m.get('thresholds', '')), action=m.get('action', 'warn'), log=log)

    @classmethod
    def for_run(cls, config, workdir: str, log=print) -> Monitors:
        """The run's monitors, replayed over `workdir`'s rows: a resumed run knows what fired
        and the KL history, and warns of nothing twice."""
        m = cls.from_config(config, log=log)
        for row in rows(workdir):
            m.check(row['step'], row, replay=True)
        return m

    def write(self, writer, step: int, row: dict, **kw) -> list[str]:
        """Checks `row` and writes it, with its derived figures, through the metrics `writer`
        (`writer.write(step, row, **kw)`); returns what fired."""
        extra, fired = self.check(step, row)
        writer.write(step, {**row, **extra}, **kw)
        return fired

    def derived(self, row: dict) -> dict:
        """Figures computed from the logged history: monitor/kl_spike."""
        kl = row.get('rollout/kl_to_ref')
        if kl is None:
            return {}
        out = {}
        if len(self._kl) >= 3:
            recent = np.median(self._kl[-KL_WINDOW:])
            out['monitor/kl_spike'] = float(kl / max(recent, KL_FLOOR))
        self._kl.append(float(kl))
        return out

    def check(self, step: int, row: dict, *, replay: bool = False) -> tuple[dict, list[str]]:
        """(the derived figures of `row`, to log with it; the thresholds it crosses for the first
        time, warned unless `replay`, which rebuilds a resumed run's state from its rows)."""
        extra = self.derived(row)
        row = {**row, **extra}
        fired = []
        for t in self.thresholds:
            value = row.get(t.name)
            if value is None or not np.isfinite(value):
                continue
            first = self.first.setdefault(t.name, float(value))
            if t.name in self.fired:
                continue
            bound = t.resolve(first)
            if (value > bound) if t.above else (value < bound):
                self.fired[t.name] = int(step)
                fired.append(t.name)
                if not replay:
                    self.log(f'monitor {t.name} fired at step {step}: {float(value):.4g} '
                             f'(threshold {t} = {bound:.4g})')
        return extra, fired

    def summary(self) -> dict:
        return {'monitors_fired': dict(self.fired)} if self.thresholds else {}

    def plot(self, workdir: str) -> str | None:
        """monitors.png of the run in `workdir`: each monitored figure and the gold reward."""
        logged = rows(workdir)
        names = [t.name for t in self.thresholds]
        if not logged or not names:
            return None
        import matplotlib  # pylint: disable=g-import-not-at-top
        matplotlib.use('Agg')
        from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
        panels = names + [k for k in GOLD_KEYS if any(k in r for r in logged)]
        fig, axes = plt.subplots(len(panels), 1, figsize=(7, 1.8 * len(panels) + 0.6), sharex=True,
                                 squeeze=False)
        for ax, name in zip(axes[:, 0], panels):
            pts = [(r['step'], r[name]) for r in logged if r.get(name) is not None]
            if pts:
                ax.plot(*zip(*pts), 'o-', ms=2)
            t = next((t for t in self.thresholds if t.name == name), None)
            if t is not None and name in self.first:
                ax.axhline(t.resolve(self.first[name]), color='C3', ls=':', lw=1)
            for fired, step in self.fired.items():
                ax.axvline(step, color='C3' if fired == name else 'gray', lw=0.8, alpha=0.6)
            ax.set_ylabel(name, fontsize=7)
        axes[-1, 0].set_xlabel('step')
        fig.suptitle('monitors (red: this figure fired; gray: another did)', fontsize=9)
        fig.tight_layout()
        path = os.path.join(workdir, 'monitors.png')
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path


def rows(workdir: str) -> list[dict]:
    """The rows of workdir/metrics.jsonl, none before the first (a resumed run replays them: on
    several processes each reads the shared workdir's file)."""
    if not os.path.exists(os.path.join(workdir, metrics_lib.METRICS_FILE)):
        return []
    return metrics_lib.read_metrics(workdir)
