"""Server-sent events in the exact shape OpenAI clients parse.

A stream is: (chat only) one role chunk, then content chunks, the last one carrying
``finish_reason``; then, when ``stream_options.include_usage`` was asked for, one chunk with
empty ``choices`` and the ``usage``; then ``data: [DONE]``. Every chunk carries ``usage: null``
when usage was requested, as OpenAI does, so strict clients see the field they expect.
"""

from __future__ import annotations

import json
from typing import Any

from latlab.serve.protocol import now_s

DONE = b"data: [DONE]\n\n"
# Stands in for the text while a chunk template is built; never appears in real output
# because json.dumps escapes NUL.
_HOLE = "\x00text\x00"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def frame(payload: dict[str, Any]) -> bytes:
    """One SSE event; compact JSON keeps the per-token cost low."""
    return b"data: " + _json(payload).encode() + b"\n\n"


class ChunkWriter:
    """Builds the chunks of one streamed response (completions or chat)."""

    __slots__ = ("_chat", "_created", "_head", "_id", "_include_usage", "_model", "_tail")

    def __init__(self, rid: str, model: str, *, chat: bool, include_usage: bool) -> None:
        self._id = rid
        self._model = model
        self._chat = chat
        self._include_usage = include_usage
        self._created = now_s()
        # Content chunks are the hot path (one per token per stream): pre-render everything
        # but the text once, so each chunk costs one json.dumps of a short string.
        hole = _json(_HOLE).encode()
        self._head, self._tail = self._content_chunk(_HOLE, None).split(hole)

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk" if self._chat else "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def start(self) -> bytes:
        """The role-only first chunk of a chat stream; nothing for completions."""
        if not self._chat:
            return b""
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return frame(self._chunk([choice]))

    def content(self, text: str, finish_reason: str | None = None, logprobs: Any = None) -> bytes:
        """One content chunk; ``logprobs`` (already in the endpoint's shape) for its tokens."""
        if finish_reason is None and logprobs is None:
            return self._head + _json(text).encode() + self._tail
        return self._content_chunk(text, finish_reason, logprobs)

    def _content_chunk(self, text: str, finish_reason: str | None, logprobs: Any = None) -> bytes:
        if self._chat:
            delta = {"content": text} if text or finish_reason is None else {}
            choice = {"index": 0, "delta": delta, "logprobs": logprobs,
                      "finish_reason": finish_reason}  # fmt: skip
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs,
                      "finish_reason": finish_reason}  # fmt: skip
        return frame(self._chunk([choice]))

    def usage(self, usage: dict[str, Any]) -> bytes:
        if not self._include_usage:
            return b""
        chunk = self._chunk([])
        chunk["usage"] = usage
        return frame(chunk)

    @staticmethod
    def error(body: dict[str, Any]) -> bytes:
        """An error after the 200 headers went out: the client sees it as an event."""
        return frame(body)
