"""Interoperability with Hugging Face transformers: checkpoints (`hf`), tokenizers and chat
templates (`tokenizer`), and the notebook entry point `from_pretrained` (`pretrained`)."""

from alignjax.interop.hf import FAMILIES, config_from_hf, hf_config, load_hf, load_into, save_hf
from alignjax.interop.pretrained_lm import Pretrained, from_pretrained
from alignjax.interop.tokenizer import HFTokenizer, load_tokenizer

__all__ = [
    'FAMILIES', 'HFTokenizer', 'Pretrained', 'config_from_hf', 'from_pretrained', 'hf_config',
    'load_hf', 'load_into', 'load_tokenizer', 'save_hf'
]
