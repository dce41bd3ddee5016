"""The spec strings a config holds, parsed in one place: starting points, data sources and
Hugging Face directories. Downstream code asks a parsed spec what it is instead of testing
string prefixes.

- a starting point (`init_from`, `reference_from`, `backbone_from`, `reward.reward_from`,
  `nash.preference_from`): '' (none), 'hf:DIR' (a Hugging Face checkpoint directory),
  'experiment:FILE[:ARGS]' (an experiment's run, trained into the cache when missing) or a
  workdir with checkpoints/;
- a data source (`data.train`, `data.eval`): 'SCHEME:REST' (synthetic:, jsonl:, json:, parquet:,
  hf:, tfds:; `data.pipeline.load_records` reads each);
- an architecture or tokenizer (`model.preset`, `tokenizer`): a name, or 'hf:DIR'.
"""

from __future__ import annotations

import dataclasses

START_KINDS = ('none', 'hf', 'peft', 'experiment', 'workdir')


@dataclasses.dataclass(frozen=True)
class Start:
    """A parsed starting point: `kind` one of START_KINDS, `value` what follows the prefix (the
    directory, the experiment spec, the workdir)."""
    kind: str
    value: str

    @classmethod
    def parse(cls, spec: str) -> 'Start':
        if not spec:
            return cls('none', '')
        for kind in ('hf', 'peft', 'experiment'):
            if spec.startswith(kind + ':'):
                return cls(kind, spec[len(kind) + 1:])
        return cls('workdir', spec)


@dataclasses.dataclass(frozen=True)
class Data:
    """A parsed data source: `scheme` ('synthetic', 'jsonl', ...; '' without one) and `rest`."""
    scheme: str
    rest: str

    @classmethod
    def parse(cls, spec: str) -> 'Data':
        scheme, sep, rest = spec.partition(':')
        return cls(scheme, rest) if sep else cls('', spec)

    @property
    def synthetic_task(self) -> str | None:
        """The task's name of a 'synthetic:TASK' source, else None."""
        return self.rest if self.scheme == 'synthetic' else None


def hf_dir(spec: str) -> str | None:
    """DIR of an 'hf:DIR' architecture or tokenizer, else None."""
    return spec[3:] if spec.startswith('hf:') else None
