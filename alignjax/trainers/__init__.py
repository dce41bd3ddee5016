"""Trainers: the generic loop and one thin module per algorithm family."""

import importlib

# config.algo -> module with `build(config, mesh) -> loop.Algorithm`.
ALGORITHMS = {
    'sft': 'alignjax.trainers.sft',
    'reward_model': 'alignjax.trainers.reward_model',
    'preference_model': 'alignjax.trainers.preference_model',
    'dpo': 'alignjax.trainers.dpo',
    'ppo': 'alignjax.trainers.policy_gradient',
    'remax': 'alignjax.trainers.policy_gradient',
    'rloo': 'alignjax.trainers.policy_gradient',
    'grpo': 'alignjax.trainers.policy_gradient',
    'reinforce_pp': 'alignjax.trainers.policy_gradient',
    'p3o': 'alignjax.trainers.policy_gradient',
    'copg': 'alignjax.trainers.policy_gradient',
    'raft': 'alignjax.trainers.policy_gradient',
    'online_dpo': 'alignjax.trainers.policy_gradient',
    'nash_md': 'alignjax.trainers.nash',
    'nash_mp': 'alignjax.trainers.nash',
    'spo': 'alignjax.trainers.nash',
    'inpo': 'alignjax.trainers.nash',
    'dno': 'alignjax.trainers.nash',
    'sppo': 'alignjax.trainers.nash',
    'online_ipo': 'alignjax.trainers.nash',
}


def get_builder(algo: str):
    if algo not in ALGORITHMS:
        raise ValueError(f'Unknown config.algo {algo!r}; known: {sorted(ALGORITHMS)}')
    return importlib.import_module(ALGORITHMS[algo]).build
