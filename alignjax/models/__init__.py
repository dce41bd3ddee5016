"""Flax NNX decoder family (Llama / Qwen / Gemma / Mistral) and its heads."""

from alignjax.models.config import PRESETS, ModelConfig, get_model_config
from alignjax.models.scoring import response_logprobs, sequence_logits
from alignjax.models.transformer import (Decoder, PreferenceModel, RewardEnsemble, RewardModel,
                                         ValueModel, init_cache, last_token_index,
                                         positions_from_mask)

__all__ = [
    'PRESETS',
    'ModelConfig',
    'get_model_config',
    'Decoder',
    'ValueModel',
    'RewardModel',
    'PreferenceModel',
    'RewardEnsemble',
    'init_cache',
    'last_token_index',
    'positions_from_mask',
    'response_logprobs',
    'sequence_logits',
]
