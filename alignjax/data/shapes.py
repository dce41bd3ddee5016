"""Records in the shapes researchers download, brought to alignjax's three normalised forms.

Accepted shapes (one line each in the README's "Data" section):

* sft: ``{prompt, response}`` or ``{prompt, completion}`` as text; ``{messages}`` (a
  conversation ending with the assistant's reply); ``{prompt, completion}`` as messages (TRL's
  conversational prompt-completion).
* preference: ``{prompt, chosen, rejected}`` as text (TRL's standard form) or as messages (TRL's
  conversational form: the prompt's turns, then the two replies); ``{chosen, rejected}`` alone,
  text (HH-RLHF: two whole dialogues) or messages (UltraFeedback as TRL publishes it), whose
  shared prompt is their longest common prefix, found as TRL's ``extract_prompt`` finds it; and
  a text ``prompt`` beside message-list ``chosen`` / ``rejected`` that already hold it
  (UltraFeedback as HuggingFaceH4 publishes it: the prompt is taken from the dialogues, as TRL's
  ``maybe_extract_prompt`` does). An optional numeric ``margin``.
* prompt: ``{prompt}`` as text or messages; other keys are kept for reward functions.

A message is ``{role, content}`` with role ``system``, ``user``, ``assistant`` or ``tool``;
``content`` is text or a list of parts, whose text parts are joined (any other part is refused by
its type); an assistant message may carry ``tool_calls`` and a tool message ``name`` /
``tool_call_id``, passed to the chat template. A record's ``tools`` (function schemas) is kept.

The normalised forms: sft ``{prompt, response}`` (text) or ``{messages}``; preference ``{prompt,
chosen, rejected, margin}`` with the three all text or all messages (``prompt`` the turns before
the replies); prompt ``{prompt, ...}``. Every error names ``where`` (file and line or row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

from alignjax.errors import DataError

ROLES = ('system', 'user', 'assistant', 'tool')
_MESSAGE_KEYS = ('tool_calls', 'name', 'tool_call_id')  # kept beside role and content


def is_messages(value: Any) -> bool:
    """Whether ``value`` is a list of messages (a conversation), not text."""
    return isinstance(value, Sequence) and not isinstance(value, str)


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ''
    if not is_messages(content):
        raise DataError(f"{where} key 'content' must be text or a list of parts, got "
                        f"{type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get('type') if isinstance(part, Mapping) else type(part).__name__
        if kind != 'text' or not isinstance(part.get('text'), str):
            raise DataError(f"{where} content part {j} has type {kind!r}; only text parts "
                            f"(type 'text' with a 'text' string) are supported")
        texts.append(part['text'])
    return ''.join(texts)


def messages(value: Any, *, where: str, key: str) -> list[dict[str, Any]]:
    """``value`` checked to be a non-empty conversation, each message normalised."""
    if not is_messages(value):
        raise DataError(f'{where}: key {key!r} must be a list of messages')
    if not value:
        raise DataError(f'{where}: key {key!r} is an empty list')
    out = []
    for i, m in enumerate(value):
        at = f'{where}: {key}[{i}]'
        if not isinstance(m, Mapping):
            raise DataError(f'{at} must be an object with role and content')
        role = m.get('role')
        if role not in ROLES:
            raise DataError(f'{at} has role {role!r}; expected one of {ROLES}')
        if 'content' not in m and not m.get('tool_calls'):
            raise DataError(f"{at} has no key 'content'")
        msg = {'role': role, 'content': _content(m.get('content'), at)}
        for extra in _MESSAGE_KEYS:
            if m.get(extra) is not None:
                msg[extra] = m[extra]
        out.append(msg)
    return out


def check_reply(conversation: Sequence[Mapping[str, Any]], *, where: str, key: str) -> None:
    """Raises unless the conversation ends with a non-empty assistant message (the reply)."""
    last = conversation[-1]
    if last['role'] != 'assistant':
        raise DataError(f"{where}: the last message must have role 'assistant' (it is the "
                        f"response, in {key!r}), got {last['role']!r}")
    if not last['content'] and not last.get('tool_calls'):
        raise DataError(f'{where}: the assistant response in {key!r} is empty')


def check_prompt_turns(conversation: Sequence[Mapping[str, Any]], *, where: str, key: str) -> None:
    """Raises unless a prompt conversation ends where a reply can start (a user or tool turn)."""
    if conversation[-1]['role'] not in ('user', 'tool'):
        raise DataError(f"{where}: the last message of {key!r} must have role 'user' or 'tool' "
                        f"(the reply follows it), got {conversation[-1]['role']!r}")


def _text(record: Mapping[str, Any], key: str, kind: str, where: str) -> str:
    if key not in record:
        raise DataError(f'{where}: missing key {key!r} for a {kind} record')
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f'{where}: key {key!r} must be a string, got {type(value).__name__}')
    if not value:
        raise DataError(f'{where}: key {key!r} is an empty string')
    return value


def shared_prefix(chosen: Sequence, rejected: Sequence) -> int:
    """Length of the prompt that two whole dialogues share, by TRL's ``extract_prompt`` rule.

    The first position where they differ (characters of text, or messages); for text, a space
    just before it goes with the replies. When one dialogue is a prefix of the other the prompt
    stops one short of the shorter, so that both replies are non-empty. One departure from TRL:
    text that differs inside a word (``Assistant: this`` and ``Assistant: the``) is split before
    that word, not inside it, so that the prompt ends where a reply can begin (TRL's DPO
    tokenisation then drops the prompt's part-word; the ids come out the same).
    """
    n = min(len(chosen), len(rejected))
    for i in range(n):
        if chosen[i] != rejected[i]:
            break
    else:
        return max(n - 1, 0)
    if isinstance(chosen, str) and i and not chosen[i - 1].isspace():
        start = max(chosen.rfind(c, 0, i) for c in ' \n\t') + 1
        if start > 0:  # inside a word: back to its start
            i = start
    return i - 1 if i and isinstance(chosen, str) and chosen[i - 1] == ' ' else i


def _implicit_prompt(record: Mapping[str, Any], where: str) -> tuple[Any, Any, Any]:
    chosen, rejected = record['chosen'], record['rejected']
    if is_messages(chosen) != is_messages(rejected):
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be text or both be lists "
                        f'of messages')
    if is_messages(chosen):
        chosen = messages(chosen, where=where, key='chosen')
        rejected = messages(rejected, where=where, key='rejected')
    else:
        chosen, rejected = (_text(record, k, 'preference', where) for k in ('chosen', 'rejected'))
    n = shared_prefix(chosen, rejected)
    if n == 0:
        raise DataError(f"{where}: 'chosen' and 'rejected' share no prompt (no common start "
                        f"before two non-empty replies); give the prompt as key 'prompt'")
    return chosen[:n], chosen[n:], rejected[n:]


def _preference(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    for key in ('chosen', 'rejected'):
        if key not in record:
            raise DataError(f'{where}: missing key {key!r} for a preference record')
    prompt = record.get('prompt')
    replies_are_messages = is_messages(record['chosen'])
    if prompt is None or (isinstance(prompt, str) and replies_are_messages):
        # No prompt, or a text prompt beside whole dialogues that repeat it (as
        # maybe_extract_prompt, the dialogues are what the model reads).
        prompt, chosen, rejected = _implicit_prompt(record, where)
    elif is_messages(prompt):
        prompt = messages(prompt, where=where, key='prompt')
        chosen, rejected = (messages(record[k], where=where, key=k) if is_messages(record[k]) else [
            {'role': 'assistant', 'content': _text(record, k, 'preference', where)}
        ] for k in ('chosen', 'rejected'))
    else:
        prompt = _text(record, 'prompt', 'preference', where)
        chosen, rejected = (_text(record, k, 'preference', where) for k in ('chosen', 'rejected'))
    if is_messages(prompt):
        if isinstance(chosen, str):  # extracted from text dialogues: cannot happen for lists
            raise DataError(f'{where}: a conversational prompt needs message-list replies')
        check_prompt_turns(prompt, where=where, key='prompt')
        check_reply(chosen, where=where, key='chosen')
        check_reply(rejected, where=where, key='rejected')
    elif not chosen.strip() or not rejected.strip():
        raise DataError(f"{where}: after the shared prompt, 'chosen' or 'rejected' is empty")
    if chosen == rejected:
        # An identical pair carries no preference: every pairwise loss is flat on it.
        raise DataError(f"{where}: 'chosen' and 'rejected' are identical; a preference pair needs "
                        f'two different responses')
    margin = record.get('margin', 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise DataError(f"{where}: key 'margin' must be a number, got {type(margin).__name__}")
    if not math.isfinite(margin):
        raise DataError(f"{where}: key 'margin' must be finite, got {margin}")
    out = {'prompt': prompt, 'chosen': chosen, 'rejected': rejected, 'margin': float(margin)}
    if record.get('tools') is not None:
        out['tools'] = record['tools']
    return out


def _sft(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    response_key = 'completion' if 'completion' in record else 'response'
    if 'messages' in record:
        if 'prompt' in record or response_key in record:
            raise DataError(f"{where}: an sft record has either 'messages' or 'prompt' and "
                            f"'{response_key}', not both")
        conversation = messages(record['messages'], where=where, key='messages')
    elif is_messages(record.get('prompt')) or is_messages(record.get(response_key)):
        prompt = messages(record.get('prompt'), where=where, key='prompt')
        reply = messages(record.get(response_key), where=where, key=response_key)
        check_prompt_turns(prompt, where=where, key='prompt')
        conversation = prompt + reply
    else:
        return {
            'prompt': _text(record, 'prompt', 'sft', where),
            'response': _text(record, response_key, 'sft', where)
        }
    check_reply(conversation, where=where, key='messages')
    out = {'messages': conversation}
    if record.get('tools') is not None:
        out['tools'] = record['tools']
    return out


def _prompt(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(record)
    if is_messages(record.get('prompt')):
        out['prompt'] = messages(record['prompt'], where=where, key='prompt')
        check_prompt_turns(out['prompt'], where=where, key='prompt')
    else:
        out['prompt'] = _text(record, 'prompt', 'prompt', where)
    return out


def normalise(record: Any, kind: str, where: str) -> dict[str, Any]:
    """One record of ``kind`` (``'sft'``, ``'preference'``, ``'prompt'``) in its normalised form;
    DataError naming ``where`` and the key otherwise."""
    if not isinstance(record, Mapping):
        raise DataError(f'{where}: a record must be a JSON object, got {type(record).__name__}')
    if kind == 'sft':
        return _sft(record, where)
    if kind == 'preference':
        return _preference(record, where)
    if kind == 'prompt':
        return _prompt(record, where)
    raise DataError(f"unknown record kind {kind!r}; expected one of ('sft', 'preference', "
                    f"'prompt')")
