"""Every synthetic task by name: the letter tasks of `data.synthetic` and the verifiable
`addition` of `data.arithmetic` (what a `synthetic:TASK` data source names)."""

from __future__ import annotations

from alignjax.data import arithmetic, synthetic

TASKS = ('transitive', 'intransitive', 'addition')


def get_task(name: str) -> synthetic.Task:
    """The synthetic task called ``name``; a ValueError naming the known ones."""
    if name == 'addition':
        return arithmetic.AdditionTask()
    if name not in TASKS:
        raise ValueError(f'unknown synthetic task {name!r}; expected one of {sorted(TASKS)}')
    return synthetic.get_task(name)
