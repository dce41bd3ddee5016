"""What the torch peers (TRL, transformers) share: the workload model, a word-level tokenizer
whose token i is the string 't<i>'
(ids 0-3: pad, BOS, EOS, unknown), random token data, and a per-step timer for HF Trainers.

Run under the peer's own interpreter; imports nothing from alignjax.
"""

from __future__ import annotations

import os
import time

from peer_common import emit, spec_from_argv, summarise, versions  # pylint: disable=unused-import


def setup_torch(spec: dict):
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(spec.get('threads', 2))
    torch.manual_seed(spec.get('seed', 0))
    return torch


def llama(spec: dict):
    """LlamaForCausalLM of the workload shape, float32, random init (seed 0), untied, eval
    dropout off (Llama has none)."""
    import torch  # pylint: disable=g-import-not-at-top
    from transformers import LlamaConfig, LlamaForCausalLM  # pylint: disable=g-import-not-at-top
    m = spec['model']
    cfg = LlamaConfig(vocab_size=m['vocab_size'], hidden_size=m['embed_dim'],
                      intermediate_size=m['mlp_dim'], num_hidden_layers=m['num_layers'],
                      num_attention_heads=m['num_heads'], num_key_value_heads=m['num_kv_heads'],
                      head_dim=m['head_dim'], rms_norm_eps=m['norm_eps'],
                      rope_theta=m['rope_theta'], max_position_embeddings=1024,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      attn_implementation='sdpa')
    torch.manual_seed(spec.get('seed', 0))
    model = LlamaForCausalLM(cfg).to(torch.float32)
    return model


def tokenizer(vocab_size: int):
    """A fast word-level tokenizer: 't<i>' is token i; no special tokens are added on encode."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
    from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
    vocab = {word(i): i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL[3]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL[0], bos_token=SPECIAL[1],
                                   eos_token=SPECIAL[2], unk_token=SPECIAL[3])


def random_ids(rng, n: int, vocab_size: int) -> list[int]:
    """Token ids drawn from [4, vocab): never pad, BOS, EOS or unknown."""
    return [int(x) for x in rng.integers(4, vocab_size, n)]


# Special tokens must not prefix ordinary words ('t1' would split 't123'): they get their own.
SPECIAL = {0: '<pad>', 1: '<s>', 2: '</s>', 3: '<unk>'}


def word(i: int) -> str:
    return SPECIAL.get(i, f't{i}')


def text(ids) -> str:
    return ' '.join(word(i) for i in ids)


class StepTimer:
    """A transformers TrainerCallback recording the wall time of every optimizer step."""
    def __new__(cls):
        from transformers import TrainerCallback  # pylint: disable=g-import-not-at-top

        class _Timer(TrainerCallback):
            def __init__(self):
                self.times, self._start = [], None

            def on_step_begin(self, args, state, control, **kw):
                self._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                self.times.append(time.perf_counter() - self._start)

        return _Timer()


os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
os.environ.setdefault('WANDB_DISABLED', 'true')
