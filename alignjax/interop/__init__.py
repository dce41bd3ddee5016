"""Interoperability with other ecosystems' checkpoints: Hugging Face transformers (`hf`)."""

from alignjax.interop.hf import FAMILIES, config_from_hf, hf_config, load_hf, save_hf

__all__ = ['FAMILIES', 'config_from_hf', 'hf_config', 'load_hf', 'save_hf']
