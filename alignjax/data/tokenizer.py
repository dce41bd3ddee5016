"""Byte-level tokenizer and the simple chat format that goes with it.

The byte tokenizer needs no files and no downloads, so the synthetic tasks and
the CPU smoke tests run anywhere. Ids 0, 1 and 2 are PAD, BOS and EOS; byte
``b`` is id ``b + 3``. The vocabulary is padded from 259 to 264 ids so that
the embedding shards evenly over a tensor axis of up to 8 devices; the padding
ids are never produced by ``encode`` and are skipped by ``decode``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from alignjax.data import chat as chat_lib
from alignjax.data import records as records_lib

_NUM_SPECIAL = 3
_NUM_BYTES = 256


class ByteTokenizer:
    """UTF-8 byte tokenizer.

    Attributes:
      pad_id: id used to pad prompts (left) and responses (right).
      bos_id: beginning-of-sequence id (never added by ``encode``).
      eos_id: end-of-sequence id; ``decode`` stops at the first one.
      vocab_size: number of embedding rows, 264 (259 real ids rounded up to a
        multiple of 8).
    """

    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    vocab_size: int = 264

    @property
    def num_real_ids(self) -> int:
        """Ids below this are specials or bytes; ids above are padding rows."""
        return _NUM_SPECIAL + _NUM_BYTES

    def encode(self, text: str) -> list[int]:
        """Returns the ids of the UTF-8 bytes of ``text`` (no BOS or EOS)."""
        if not isinstance(text, str):
            raise TypeError(f'encode expects str, got {type(text).__name__}')
        return [b + _NUM_SPECIAL for b in text.encode('utf-8')]

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of ``ids`` up to (not including) the first EOS.

        PAD, BOS and the padding ids (>= 259) are skipped; invalid UTF-8 is
        replaced by U+FFFD rather than raising, because sampled ids can be any
        byte sequence.
        """
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if _NUM_SPECIAL <= i < self.num_real_ids:
                out.append(i - _NUM_SPECIAL)
        return out.decode('utf-8', errors='replace')

    chat_template: str | None = None  # config.data.chat_template=PATH sets one

    def format_chat(self, messages: Sequence[Mapping[str, str]]) -> tuple[str, str]:
        """Renders chat messages as (prompt_text, response_text).

        The response is the last message, which must come from the assistant.
        Without a chat template every earlier message becomes a
        ``"<role>: <content>"`` line and the prompt ends with ``"assistant: "``
        so the response continues it (``data.chat.plain``).

        Args:
          messages: list of ``{"role": ..., "content": ...}`` dicts, roles in
            ``system``, ``user``, ``assistant``, ``tool``.

        Returns:
          A (prompt_text, response_text) pair.

        Raises:
          DataError: if the messages are malformed or the last message is not
            the assistant's.
        """
        records_lib.check_messages(messages, where='format_chat')
        chat = chat_lib.Chat.of(self)
        prompt, _, (response,) = chat.split(messages[:-1], [messages[-1:]])
        return prompt, response
