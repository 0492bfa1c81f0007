"""A recorded upstream response: what the cache stores and what coalesced clients share.

A streamed response is kept as its SSE events, each with the time it arrived after the request
was sent, so a replay sends the same events (the same chunk boundaries, the same ``usage``) in
the same order, immediately or paced as recorded. A response is complete only when the stream
ended with ``data: [DONE]`` and no error event; anything else is never stored.

Stored form: 4-byte big-endian header length, a JSON header, then the event bytes back to back.
No pickle: the store may be a Redis that other programs can write to.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

FORMAT = "latlab.gateway.recording/1"
DONE_EVENT = b"data: [DONE]"
_LEN = struct.Struct(">I")


class SSESplitter:
    """Cuts a byte stream into whole SSE events (each with its blank-line terminator)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        events = []
        start = 0
        while True:
            cut = buf.find(b"\n\n", start)
            if cut < 0:
                break
            events.append(buf[start : cut + 2])
            start = cut + 2
        self._buf = buf[start:]
        return events

    @property
    def pending(self) -> bytes:
        return self._buf


def is_error_event(event: bytes) -> bool:
    """An OpenAI-style error sent inside a 200 stream (vLLM and latlab serve do this)."""
    return event.startswith(b'data: {"error"') or event.startswith(b'data:{"error"')


def usage_of(event: bytes) -> dict[str, Any] | None:
    """The ``usage`` object of an event that carries one (the last chunk of a stream)."""
    if b'"usage":{' not in event and b'"usage": {' not in event:
        return None
    try:
        obj = json.loads(event[event.index(b"{") :])
    except ValueError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None


def tokens_spent(usage: dict[str, Any] | None, *, prompt: int, answer: int) -> int:
    """Tokens an answer spends from a tokens/min budget: its ``usage``, else an estimate.

    A stream sent without ``stream_options.include_usage`` carries no usage; counting it as
    free would let any client step around the limit, so it is charged the prompt's estimate
    plus one token per answer event (servers send about one token per event).
    """
    if usage is not None:
        total = usage.get("total_tokens")
        if isinstance(total, int) and total >= 0:
            return total
        parts = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if all(isinstance(n, int) and n >= 0 for n in parts):
            return sum(parts)  # type: ignore[arg-type]
    return max(0, prompt) + max(0, answer)


def answer_events(events: list[bytes]) -> int:
    """Events of a stream other than its ``[DONE]`` marker."""
    return sum(1 for event in events if not event.startswith(DONE_EVENT))


@dataclass(kw_only=True, slots=True)
class Recording:
    """One complete response: status, content type, and events (stream) or body (JSON)."""

    status: int = 200
    content_type: str = "application/json"
    stream: bool = False
    events: list[bytes] = field(default_factory=list)  # stream: SSE events, [DONE] included
    offsets_ms: list[float] = field(default_factory=list)  # each event's arrival after send
    body: bytes = b""  # not streamed: the whole JSON body
    created_s: float = 0.0  # wall clock when recorded (Cache-Control max-age is about it)

    def encode(self) -> bytes:
        head = {
            "format": FORMAT,
            "status": self.status,
            "content_type": self.content_type,
            "stream": self.stream,
            "lengths": [len(e) for e in self.events],
            "offsets_ms": [round(t, 3) for t in self.offsets_ms],
            "body_length": len(self.body),
            "created_s": self.created_s,
        }
        raw = json.dumps(head, separators=(",", ":")).encode()
        return _LEN.pack(len(raw)) + raw + b"".join(self.events) + self.body

    @classmethod
    def decode(cls, data: bytes) -> Recording:
        """Raises ValueError on anything that is not a recording of this format."""
        if len(data) < _LEN.size:
            raise ValueError("truncated recording")
        (n,) = _LEN.unpack_from(data)
        head = json.loads(data[_LEN.size : _LEN.size + n])
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise ValueError("not a latlab gateway recording")
        pos = _LEN.size + n
        events = []
        for length in head["lengths"]:
            events.append(data[pos : pos + length])
            pos += length
        body = data[pos : pos + head["body_length"]]
        if pos + head["body_length"] != len(data):
            raise ValueError("recording length mismatch")
        return cls(
            status=int(head["status"]),
            content_type=str(head["content_type"]),
            stream=bool(head["stream"]),
            events=events,
            offsets_ms=[float(t) for t in head["offsets_ms"]],
            body=body,
            created_s=float(head["created_s"]),
        )

    def tokens(self, prompt_estimate: int) -> int:
        """What replaying this answer spends from a tokens/min budget (``tokens_spent``)."""
        answer = answer_events(self.events) if self.stream else len(self.body) // 4
        return tokens_spent(self.usage, prompt=prompt_estimate, answer=answer)

    @property
    def usage(self) -> dict[str, Any] | None:
        if not self.stream:
            try:
                obj = json.loads(self.body)
            except ValueError:
                return None
            usage = obj.get("usage") if isinstance(obj, dict) else None
            return usage if isinstance(usage, dict) else None
        for event in reversed(self.events):
            usage = usage_of(event)
            if usage is not None:
                return usage
        return None
