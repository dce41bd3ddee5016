"""Trainers: the generic loop and one thin module per algorithm family."""

import importlib

# config.algo -> module with `build(config, mesh) -> loop.Algorithm`.
ALGORITHMS = {
    'sft': 'alignjax.trainers.sft',
    'reward_model': 'alignjax.trainers.reward_model',
    'preference_model': 'alignjax.trainers.preference_model',
    'dpo': 'alignjax.trainers.dpo',
}


def get_builder(algo: str):
    if algo not in ALGORITHMS:
        raise ValueError(f'Unknown config.algo {algo!r}; known: {sorted(ALGORITHMS)}')
    return importlib.import_module(ALGORITHMS[algo]).build
