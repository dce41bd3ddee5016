"""Chat templates: how a record's turns become the text that is tokenised.

``config.data.chat_template`` chooses, for every algorithm and record kind alike:

* ``'auto'`` (default): when the tokenizer has a chat template, every record goes through it; a
  text record is one user turn (its prompt) and the assistant's reply, and a text prompt that
  already begins with the BOS token is taken as rendered by hand and left as it is. Without a
  template (the byte tokenizer), text stays text and conversations use the plain format.
* ``'messages'``: only conversational records go through the template; text stays text (TRL's
  rule).
* ``'none'``: no template; conversations use the plain ``role: content`` format.
* a path to a Jinja file: that template instead of the tokenizer's, as ``'auto'``.

A prompt is its turns rendered with the generation prompt; a reply is what the whole
conversation adds after that prompt, cut before the first EOS the template writes (the pipeline
appends EOS itself, once). A template writes its own BOS; BOS is added only to text that did not
go through a template, where the tokenizer would add it (``tok.add_bos``), and never twice.

Templates are rendered by jinja2 in a sandbox with transformers' settings (trim_blocks,
lstrip_blocks, loop controls, ``raise_exception``, ``strftime_now``, a non-escaping ``tojson``)
and transformers' ``{% generation %}`` tag, whose spans ``render(..., spans=True)`` returns (the
assistant mask).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import datetime
import functools
import importlib
import json
import os
import threading
from typing import Any

from alignjax.errors import DataError, ValidationError, require

MODES = ('auto', 'messages', 'none')
Messages = Sequence[Mapping[str, Any]]

_tracking = threading.local()  # the {% generation %} spans of the render in progress


def _generation_extension():
    from jinja2 import ext, nodes  # pylint: disable=g-import-not-at-top

    class Generation(ext.Extension):
        """``{% generation %}...{% endgeneration %}``: renders its body, noting where it lies."""
        tags = {'generation'}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
            return nodes.CallBlock(self.call_method('_mark', []), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            text = caller()
            chunks = getattr(_tracking, 'chunks', None)
            if chunks is not None:
                start = sum(len(c) for c in chunks)
                _tracking.spans.append((start, start + len(text)))
            return text

    return Generation


@functools.lru_cache(maxsize=16)
def compile_template(template: str):
    """The Jinja template, compiled as transformers compiles chat templates."""
    jinja2 = require('jinja2', 'a chat template', 'hf')
    sandbox = importlib.import_module('jinja2.sandbox')

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=['jinja2.ext.loopcontrols', _generation_extension()])
    env.filters['tojson'] = tojson
    env.globals['raise_exception'] = raise_exception
    env.globals['strftime_now'] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


def render(template: str, messages: Messages, *, add_generation_prompt: bool = False,
           variables: Mapping[str, Any] | None = None, tools=None, spans: bool = False):
    """The conversation rendered by ``template``; with ``spans``, also the (start, end) character
    spans of its ``{% generation %}`` blocks."""
    compiled = compile_template(template)
    kwargs = dict(variables or {})
    if tools is not None:
        kwargs['tools'] = tools
    _tracking.chunks, _tracking.spans = [], []
    try:
        for chunk in compiled.generate(messages=[dict(m) for m in messages],
                                       add_generation_prompt=add_generation_prompt, **kwargs):
            _tracking.chunks.append(chunk)
        text, found = ''.join(_tracking.chunks), _tracking.spans
    finally:
        _tracking.chunks = _tracking.spans = None
    return (text, found) if spans else text


def plain(messages: Messages, *, add_generation_prompt: bool = False) -> str:
    """The format of conversations without a template: ``role: content`` lines (an assistant's
    tool calls as JSON after its content), and ``assistant: `` to prompt a reply."""
    lines = []
    for m in messages:
        content = m['content']
        if m.get('tool_calls'):
            content = f"{content} {json.dumps(m['tool_calls'], ensure_ascii=False)}".lstrip()
        lines.append(f"{m['role']}: {content}")
    if add_generation_prompt:
        lines.append('assistant: ')
    return '\n'.join(lines)


def read_template(path: str) -> str:
    """The Jinja file of ``config.data.chat_template=PATH``."""
    try:
        with open(os.path.expanduser(path), encoding='utf-8') as f:
            return f.read()
    except OSError as e:
        raise ValidationError(f'config.data.chat_template={path!r}: not one of {MODES} and not a '
                              f'readable template file ({e.strerror})') from None


@dataclasses.dataclass(frozen=True)
class Chat:
    """How one run renders records: the template (None: the plain format), whether text
    records go through it, and the tokenizer's special-token texts."""
    template: str | None
    wrap_text: bool
    variables: Mapping[str, str]
    bos: str | None
    eos: str | None
    add_bos: bool

    @classmethod
    def of(cls, tok, mode: str = 'auto') -> 'Chat':
        template = getattr(tok, 'chat_template', None)
        if mode == 'none':
            template = None
        elif mode not in MODES:
            template = read_template(mode)
        specials = dict(getattr(tok, 'special_tokens', {}))
        return cls(template=template, wrap_text=template is not None and mode != 'messages',
                   variables={f'{k}_token': v for k, v in specials.items()},
                   bos=specials.get('bos'), eos=specials.get('eos'),
                   add_bos=bool(getattr(tok, 'add_bos', False)))

    def conversation(self, messages: Messages, *, add_generation_prompt: bool, tools=None) -> str:
        if self.template is None:
            return plain(messages, add_generation_prompt=add_generation_prompt)
        try:
            return render(self.template, messages, add_generation_prompt=add_generation_prompt,
                          variables=self.variables, tools=tools)
        except Exception as e:  # pylint: disable=broad-except  (jinja's errors are many)
            raise DataError(f'the chat template cannot render this conversation: '
                            f'{type(e).__name__}: {e}') from None

    def _rendered(self, text: str) -> bool:
        """Whether a text prompt was rendered by hand (it begins with the BOS token)."""
        return bool(self.bos) and text.startswith(self.bos)

    def split(self, prompt: str | Messages, replies: Sequence[str | Messages] = (),
              tools=None) -> tuple[str, bool, list[str]]:
        """``(prompt text, whether BOS goes before it, [reply texts])`` of a record: the prompt
        rendered once, with the generation prompt, and each reply as what the whole conversation
        adds after it, cut before the EOS the template writes."""
        if isinstance(prompt, str) and all(
                isinstance(r, str) for r in replies) and (not self.wrap_text
                                                          or self._rendered(prompt)):
            return prompt, self.add_bos and not self._rendered(prompt), list(replies)
        turns = [{'role': 'user', 'content': prompt}] if isinstance(prompt, str) else list(prompt)
        head = self.conversation(turns, add_generation_prompt=True, tools=tools)
        texts = []
        for reply in replies:
            if isinstance(reply, str):
                reply = [{'role': 'assistant', 'content': reply}]
            full = self.conversation(turns + list(reply), add_generation_prompt=False, tools=tools)
            if not full.startswith(head):
                raise DataError('the chat template renders the conversation without its prompt '
                                '(with the generation prompt) as a prefix; it cannot be split '
                                'into prompt and reply (config.data.chat_template=none renders '
                                'it plainly)')
            text = full[len(head):]
            if self.template is not None and self.eos and self.eos in text:
                text = text[:text.index(self.eos)]
            texts.append(text)
        return head, self.template is None and self.add_bos, texts

    def assistant_segments(self, messages: Messages, tools=None) -> list[tuple[str, bool]]:
        """The whole conversation as ``(text, is_assistant)`` pieces: the assistant's turns by
        the template's ``{% generation %}`` spans when it has them, else by what each assistant
        message adds after the turns before it (with the generation prompt). The first piece is
        the context before the first assistant turn."""
        if self.template is None:
            full, spans = plain(messages), []
        else:
            full, spans = render(self.template, messages, variables=self.variables, tools=tools,
                                 spans=True)
        if not spans:
            for i, m in enumerate(messages):
                if m['role'] != 'assistant':
                    continue
                head = self.conversation(messages[:i], add_generation_prompt=True, tools=tools)
                upto = self.conversation(messages[:i + 1], add_generation_prompt=False, tools=tools)
                if not (upto.startswith(head) and full.startswith(upto)):
                    raise DataError('the chat template does not render the conversation turn by '
                                    'turn; its assistant turns cannot be located (a template '
                                    'with {% generation %} tags can)')
                spans.append((len(head), len(upto)))
        pieces, at = [], 0
        for start, end in spans:
            pieces += [(full[at:start], False), (full[start:end], True)]
            at = end
        if at < len(full):
            pieces.append((full[at:], False))
        return pieces
