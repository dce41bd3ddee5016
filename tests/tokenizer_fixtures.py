"""A byte-level BPE tokenizer trained in the test (nothing downloaded), shared by the tokenizer
and data-shape tests."""

import json
import os

CORPUS = [
    'hello world, this is a test of the tokenizer', 'preference learning with nash equilibria',
    'héllo wörld — ünïcode 你好', 'the policy samples two responses and the judge prefers one'
] * 40
CHATML = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['system', 'user', "
          "'assistant'] %}{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
          "<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ['<s>', '</s>', '<pad>', '<|im_start|>', '<|im_end|>']


def bpe_tokenizer(directory, *, config=None, post_bos=True):
    """A byte-level BPE tokenizer.json trained on CORPUS (+ tokenizer_config.json)."""
    import tokenizers  # pylint: disable=g-import-not-at-top  (an optional dependency)
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if post_bos:
        tok.post_processor = processors.TemplateProcessing(
            single='<s> $A', pair='<s> $A <s> $B', special_tokens=[('<s>', tok.token_to_id('<s>'))])
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, 'tokenizer.json'))
    config = {
        'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<s>', 'eos_token': '<|im_end|>',
        'pad_token': '<pad>', 'chat_template': CHATML, **(config or {})
    }
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
        json.dump({k: v for k, v in config.items() if v is not None}, f)
    return str(directory)
