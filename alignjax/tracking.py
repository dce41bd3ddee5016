"""An optional experiment tracker beside metrics.jsonl and TensorBoard: `config.tracker`.

`config.tracker='wandb'` sends the same scalars as TensorBoard (every logged step, evaluations
included) and the whole config to Weights & Biases, project `config.tracker_project`, run name the
workdir's name. The run id is kept in `WORKDIR/tracker.json`, so a resumed run continues the same
tracker run (W&B keeps the first value of a step it has seen: the steps a resume repeats after
its checkpoint are not sent twice). `WANDB_MODE=offline` writes the run under `WORKDIR/wandb` for
a later `wandb sync`. Off by default (`''`); alignjax's `[track]` extra brings wandb.
"""

from __future__ import annotations

import json
import os
import uuid

from alignjax.errors import ValidationError, require

TRACKERS = ('', 'wandb')
ID_FILE = 'tracker.json'


class WandbTracker:
    """A W&B run: `log(step, scalars)`, `close()`."""
    def __init__(self, workdir: str, config: dict, *, project: str):
        wandb = require('wandb', 'config.tracker=wandb', 'track')
        path = os.path.join(workdir, ID_FILE)
        state = {}
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
        if state.get('wandb_id') is None:
            state['wandb_id'] = uuid.uuid4().hex[:16]
            with open(path, 'w') as f:
                json.dump(state, f)
        self.run = wandb.init(project=project, name=os.path.basename(os.path.abspath(workdir)),
                              id=state['wandb_id'], resume='allow', dir=workdir, config=config)
        self._floor = int(getattr(self.run, 'step', 0) or 0)  # a resumed run's next step

    def log(self, step: int, scalars: dict) -> None:
        if step >= self._floor:  # steps a resume repeats were sent before its checkpoint
            self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(name: str, workdir: str, config: dict, *, project: str = 'alignjax'):
    """The tracker `name` (`config.tracker`), or None for ''."""
    if name == '':
        return None
    if name == 'wandb':
        return WandbTracker(workdir, config, project=project)
    raise ValidationError(f'config.tracker={name!r}: expected one of {TRACKERS}')
