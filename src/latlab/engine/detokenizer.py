"""Incremental detokenisation with stop strings, safe for multi-byte characters.

Each new token is decoded together with a few tokens before it and only the text that
grew is emitted; while the decoded tail ends in U+FFFD (half a UTF-8 character), nothing
is emitted until the next token completes it. Stop strings are matched a character at a time
(latlab.engine.stop_strings) at a cost per character that does not grow with their number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latlab.engine.stop_strings import StopStrings

# Prompt tokens kept as left context so the first output token gets its leading space right.
_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"
# transformers' fast tokenizers whose decode is the Rust backend's plus an optional clean-up.
_BACKEND_DECODES = {"TokenizersBackend._decode", "PreTrainedTokenizerFast._decode"}


def text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """``ids -> text`` without special tokens, as ``tokenizer.decode`` gives it.

    Each generated token is decoded twice; transformers' ``decode`` spends about two thirds of
    its ~3 us converting arguments around the Rust backend's call (measured, docs/engine.md),
    which at batch 64 was a fifth of the step's time outside the model. Where the tokenizer is
    a plain fast one that cleans no spaces up, the backend's own decode gives the same text.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    impl = getattr(type(tokenizer), "_decode", None)
    plain = getattr(impl, "__qualname__", "") in _BACKEND_DECODES
    if backend is not None and plain and tokenizer.clean_up_tokenization_spaces is False:
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


class IncrementalDetokenizer:
    def __init__(
        self, tokenizer: Any, prompt_token_ids: list[int], stop: StopStrings | list[str] | None
    ):
        self._decode = text_decoder(tokenizer)
        self._tokens = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._tokens)
        if stop and not isinstance(stop, StopStrings):
            stop = StopStrings(stop)
        self._stops = stop.matcher() if stop else None
        self.text = ""
        self._emitted = 0

    def append(self, token_id: int) -> bool:
        """Add one generated token; True when a stop string appeared (text is trimmed)."""
        self._tokens.append(token_id)
        prefix = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        full = self._decode(self._tokens[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith(_REPLACEMENT):
            return False
        delta = full[len(prefix) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._tokens)
        self.text += delta
        return self._find_stop(len(delta))

    @property
    def has_stop_strings(self) -> bool:
        return self._stops is not None

    def extend(self, token_ids: list[int]) -> None:
        """Add tokens one by one, as ``append`` would have step by step (no stop strings)."""
        for token_id in token_ids:
            self.append(token_id)

    def flush(self) -> None:
        """At the end, emit whatever is still held back (even an incomplete character)."""
        prefix = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        full = self._decode(self._tokens[self._prefix_offset :])
        if len(full) > len(prefix):
            self.text += full[len(prefix) :]
            self._read_offset = len(self._tokens)
            self._prefix_offset = self._read_offset
            self._find_stop(len(full) - len(prefix))

    def _find_stop(self, delta_len: int) -> bool:
        """Whether a stop string completed in the last ``delta_len`` characters; the text
        is cut where the first one to complete begins."""
        if self._stops is None:
            return False
        begin = len(self.text) - delta_len
        offset = self._stops.feed(self.text[begin:])
        if offset is None:
            return False
        self.text = self.text[: begin + offset]
        return True

    @property
    def emitted_text(self) -> str:
        return self.text[: self._emitted]

    def take_new_text(self, finished: bool) -> str:
        """Text not yet handed out; while running, hold back a stop string in progress."""
        hold = 0 if finished or self._stops is None else self._stops.partial
        end = len(self.text) - hold
        end = max(end, self._emitted)
        new = self.text[self._emitted : end]
        self._emitted = end
        return new
