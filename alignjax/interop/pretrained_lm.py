"""The notebook entry point: a Hugging Face checkpoint directory -> model, tokenizer, text.

    from alignjax import interop
    lm = interop.from_pretrained('/path/to/Qwen2.5-0.5B-Instruct')
    lm.generate(['What is RLHF?'], chat=True, max_new_tokens=64)

The same directory trains with `model=hf:DIR` (architecture), `--config.init_from=hf:DIR`
(weights of the policy and reference; of the backbone of a reward or value model) and
`--config.tokenizer=hf:DIR`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from alignjax import sampling
from alignjax import sharding as sharding_lib
from alignjax.interop import hf
from alignjax.interop import tokenizer as tokenizer_lib
from alignjax.models.config import ModelConfig
from alignjax.models.transformer import Decoder


@dataclasses.dataclass
class Pretrained:
    """A loaded checkpoint: the sharded `Decoder`, its config, its tokenizer."""

    model: Decoder
    config: ModelConfig
    tokenizer: tokenizer_lib.HFTokenizer

    def encode(self, prompts: list, *, chat: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded prompt ids and mask; with `chat`, each prompt (a string: one user turn;
        or a list of messages) goes through the chat template with the generation prompt."""
        tok = self.tokenizer
        if chat:
            texts = [
                tok.apply_chat_template(
                    [{'role': 'user', 'content': p}] if isinstance(p, str) else p,
                    add_generation_prompt=True) for p in prompts
            ]
            ids = [tok.encode(t) for t in texts]
        else:
            ids = [tok.encode(p, add_special_tokens=True) for p in prompts]
        width = max(len(i) for i in ids)
        tokens = np.full((len(ids), width), tok.pad_id, np.int32)
        mask = np.zeros((len(ids), width), np.int32)
        for row, i in enumerate(ids):
            tokens[row, width - len(i):], mask[row, width - len(i):] = i, 1
        return tokens, mask

    def generate(self, prompts: list, *, chat: bool = False, max_new_tokens: int = 64,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0) -> list[str]:
        """Responses to `prompts` (greedy at temperature 0), decoded up to EOS."""
        tokens, mask = self.encode(prompts, chat=chat)
        config = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature
                                         or 1.0, top_k=top_k, top_p=top_p,
                                         greedy=temperature == 0.0, eos_id=self.tokenizer.eos_id,
                                         pad_id=self.tokenizer.pad_id)
        out = sampling.generate(self.model, tokens, mask, jax.random.key(seed), config)
        return [self.tokenizer.decode(t) for t in np.asarray(out['tokens'])]


def from_pretrained(directory: str, *, mesh=None, dtype: str | None = None, rules=None,
                    bos: str = '', eos: str = '', pad: str = '') -> Pretrained:
    """Loads a Hugging Face checkpoint directory (config.json, safetensors, tokenizer files).

    Args:
        directory: a `save_pretrained` directory of a Llama, Qwen2/3, Mistral or Gemma 1/2/3 model.
        mesh: the device mesh; None: every local device on the fsdp axis.
        dtype: parameter and compute dtype; None: the checkpoint's.
        rules: logical-axis rules; None: alignjax's defaults.
        bos, eos, pad: special-token overrides (token text); '': the checkpoint's.
    """
    if mesh is None:
        mesh = sharding_lib.make_mesh((1, -1, 1))
    model, cfg = hf.load_hf(directory, mesh, rules=rules, dtype=dtype)
    tok = tokenizer_lib.load_tokenizer(directory, bos=bos, eos=eos, pad=pad)
    return Pretrained(model, cfg, tok)
