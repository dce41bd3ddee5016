"""Trainers: the generic loop and one thin module per algorithm family."""

import importlib

# config.algo -> module with `build(config, mesh) -> loop.Algorithm`.
ALGORITHMS = {
    'sft': 'alignjax.trainers.sft',
}


def get_builder(algo: str):
    if algo not in ALGORITHMS:
        raise ValueError(f'Unknown config.algo {algo!r}; known: {sorted(ALGORITHMS)}')
    return importlib.import_module(ALGORITHMS[algo]).build
