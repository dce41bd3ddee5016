"""Hugging Face tokenizers: `tokenizer.json` (the `tokenizers` library) or a SentencePiece model,
with the checkpoint's special tokens and its chat template, applied as transformers applies them.

`load_tokenizer(DIR)` returns an `HFTokenizer` with the interface the data pipeline, the sampler
and the evaluation use (`encode`, `decode`, `pad_id`, `bos_id`, `eos_id`, `vocab_size`,
`format_chat`, `add_bos`), so `config.tokenizer = 'hf:DIR'` swaps it in for the byte tokenizer.

Special tokens come from the checkpoint's files, in transformers' order of precedence:
tokenizer_config.json, then special_tokens_map.json; EOS falls back to generation_config.json's
first `eos_token_id`, PAD to EOS (the usual choice for decoder-only models: padding is always
masked). Each can be overridden by token text (`config.special_tokens.{bos,eos,pad}`).

Chat templates (tokenizer_config.json `chat_template`, or chat_template.jinja) are rendered as
`alignjax.data.chat` renders them (transformers' settings and its `{% generation %}` tag), with the
special tokens as variables, and the result is encoded without adding special tokens: the template
writes them itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from alignjax.data import chat as chat_lib
from alignjax.data import records as records_lib
from alignjax.errors import require

_SPECIALS = ('bos', 'eos', 'pad', 'unk')


def _read_json(directory: str, name: str) -> dict:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding='utf-8') as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}: invalid JSON ({e})') from e


def _token_text(value) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get('content')
    return value


class _TokenizersBackend:
    """tokenizer.json through the `tokenizers` library."""
    def __init__(self, path: str):
        tokenizers = require('tokenizers', f'{path}', 'hf')
        self.tok = tokenizers.Tokenizer.from_file(path)
        self.size = self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def token_id(self, text: str) -> int | None:
        return self.tok.token_to_id(text)

    def adds_bos(self, bos_id: int | None) -> bool:
        ids = self.tok.encode('a', add_special_tokens=True).ids
        return bos_id is not None and bool(ids) and ids[0] == bos_id


class _SentencePieceBackend:
    """A SentencePiece model (tokenizer.model), encoded as SentencePiece itself encodes."""
    def __init__(self, path: str):
        sentencepiece = require('sentencepiece', f'{path}', 'hf')
        self.sp = sentencepiece.SentencePieceProcessor(model_file=path)
        self.size = self.sp.get_piece_size()

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        del add_special_tokens  # HFTokenizer adds BOS / EOS by tokenizer_config.json's flags
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def token_id(self, text: str) -> int | None:
        i = self.sp.piece_to_id(text)
        return None if i == self.sp.unk_id() and text != self.sp.id_to_piece(i) else i


class HFTokenizer:
    """A checkpoint's tokenizer with alignjax's tokenizer interface.

    Attributes:
        bos_id, eos_id, pad_id: special ids (bos_id may be None: Qwen has none).
        add_bos: whether the tokenizer puts BOS before plain text (the pipeline then does too).
        vocab_size: the number of ids it can produce (the model's vocabulary may be larger).
        chat_template: the Jinja template, or None.
    """
    def __init__(self, directory: str, *, bos: str = '', eos: str = '', pad: str = ''):
        self.directory = directory
        if os.path.isfile(os.path.join(directory, 'tokenizer.json')):
            self._backend = _TokenizersBackend(os.path.join(directory, 'tokenizer.json'))
        elif os.path.isfile(os.path.join(directory, 'tokenizer.model')):
            self._backend = _SentencePieceBackend(os.path.join(directory, 'tokenizer.model'))
        else:
            raise FileNotFoundError(f'{directory}: no tokenizer.json or tokenizer.model')
        config = _read_json(directory, 'tokenizer_config.json')
        specials_map = _read_json(directory, 'special_tokens_map.json')
        generation = _read_json(directory, 'generation_config.json')
        overrides = {'bos': bos, 'eos': eos, 'pad': pad}
        self.special_tokens = {}  # name -> token text, as the chat template sees them
        for name in _SPECIALS:
            text = overrides.get(name) or _token_text(
                config.get(f'{name}_token', specials_map.get(f'{name}_token')))
            if text is not None:
                self.special_tokens[name] = text
        ids = {name: self._id(name, text) for name, text in self.special_tokens.items()}
        if 'eos' not in ids and generation.get('eos_token_id') is not None:
            eos_ids = generation['eos_token_id']
            ids['eos'] = eos_ids[0] if isinstance(eos_ids, list) else eos_ids
        if 'eos' not in ids:
            raise ValueError(f'{directory}: no EOS token in tokenizer_config.json, '
                             'special_tokens_map.json or generation_config.json; set '
                             'config.special_tokens.eos')
        self.bos_id, self.eos_id = ids.get('bos'), ids['eos']
        self.pad_id = ids.get('pad', self.eos_id)
        # As transformers (v5): with a tokenizer.json its post-processor decides what
        # `tokenizer(text)` adds, and add_bos_token / add_eos_token are ignored; a SentencePiece
        # model follows those flags (BOS by default, as Llama and Gemma).
        self._explicit = isinstance(self._backend, _SentencePieceBackend)
        self.add_bos = (bool(config.get('add_bos_token', True)) if self._explicit else
                        self._backend.adds_bos(self.bos_id)) and self.bos_id is not None
        self.add_eos = self._explicit and bool(config.get('add_eos_token', False))
        self.vocab_size = self._backend.size
        self.chat_template = config.get('chat_template')
        template_file = os.path.join(directory, 'chat_template.jinja')
        if self.chat_template is None and os.path.isfile(template_file):
            with open(template_file, encoding='utf-8') as f:
                self.chat_template = f.read()

    def _id(self, name: str, text: str) -> int:
        i = self._backend.token_id(text)
        if i is None:
            raise ValueError(f'{self.directory}: the {name} token {text!r} is not in the '
                             'vocabulary')
        return i

    @property
    def num_real_ids(self) -> int:
        return self.vocab_size

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Ids of `text`; special-token text inside it (as a chat template writes) is parsed as
        those tokens. With `add_special_tokens`, as transformers' `tokenizer(text)` encodes."""
        if not isinstance(text, str):
            raise TypeError(f'encode expects str, got {type(text).__name__}')
        if add_special_tokens and not self._explicit:
            return self._backend.encode(text, add_special_tokens=True)
        ids = self._backend.encode(text, add_special_tokens=False)
        if add_special_tokens:
            ids = [self.bos_id] * self.add_bos + ids + [self.eos_id] * self.add_eos
        return ids

    def decode(self, ids) -> str:
        """Text of `ids` up to the first EOS, special tokens skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if 0 <= i < self.vocab_size:
                out.append(i)
        return self._backend.decode(out)

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]], *,
                            add_generation_prompt: bool = False, tokenize: bool = False, **kwargs):
        """The conversation rendered by the checkpoint's chat template (text, or its ids)."""
        if self.chat_template is None:
            raise ValueError(f'{self.directory}: the tokenizer has no chat template '
                             '(tokenizer_config.json chat_template or chat_template.jinja)')
        variables = {f'{name}_token': text for name, text in self.special_tokens.items()}
        text = chat_lib.render(self.chat_template, messages,
                               add_generation_prompt=add_generation_prompt,
                               variables={**variables, **kwargs})
        return self.encode(text) if tokenize else text

    def format_chat(self, messages: Sequence[Mapping[str, str]]) -> tuple[str, str]:
        """(prompt_text, response_text) of a conversation whose last message is the assistant's.

        The prompt is the history rendered with the generation prompt; the response is what the
        full conversation adds after it, cut before its EOS (the pipeline appends EOS itself).
        Without a chat template, the byte tokenizer's plain 'role: content' format is used.
        """
        records_lib.check_messages(messages, where='format_chat')
        chat = chat_lib.Chat.of(self)
        prompt, _, (response,) = chat.split(messages[:-1], [messages[-1:]])
        return prompt, response


def load_tokenizer(directory: str, *, bos: str = '', eos: str = '', pad: str = '') -> HFTokenizer:
    """The tokenizer of a Hugging Face checkpoint directory; bos/eos/pad override its specials."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'{directory}: no such directory')
    return HFTokenizer(directory, bos=bos, eos=eos, pad=pad)
