"""What an OpenAI-compatible reply says, read after it has ended: token arrivals, usage, finish.

A **token arrival** is a chunk the server sent for generated tokens, even when its text is
empty: a token that decodes to nothing (EOS under ``ignore_eos``, a special token) or to part of
a multi-byte character still arrived (a real vLLM chat run sent 20.8% of its token chunks with
empty content). Not token arrivals: the role-only first chunk of a chat stream, usage-only
chunks (no choices), and chunks that only close the stream (an empty delta with a
``finish_reason``). An empty-text chunk with a finish reason is ambiguous: vLLM sends one for
an EOS token, other servers to close the stream; the server's ``usage`` decides (see
:func:`reconcile`).

What a truthful server never sends is noted in ``Reply.problems`` (problem -> an example) and
never believed: events after ``[DONE]`` are not read (the reply ends at ``[DONE]``, as the
``openai`` client's does), a token after the chunk that gave the finish reason is kept but
flagged, and a running usage whose counts shrink or whose prompt changes is flagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from latlab.bench.sse import split_events


class ReplyError(Exception):
    """The reply is broken; ``reason`` is the record's error reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(kw_only=True, slots=True)
class Reply:
    """Token-carrying chunks (arrival time and text, possibly empty) and the rest of a reply."""

    arrivals: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    maybe: list[bool] = field(default_factory=list)  # empty chunk with a finish_reason
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    done_ns: int | None = None  # when [DONE] arrived
    problems: dict[str, str] = field(default_factory=dict)  # what a truthful server never does

    def drop(self, i: int) -> None:
        del self.arrivals[i], self.texts[i], self.maybe[i]

    @property
    def first_text(self) -> int | None:
        """Index of the first arrival with visible text (TTFT counts the first arrival)."""
        return next((i for i, t in enumerate(self.texts) if t), None)


def _chunk_text(choice: dict[str, Any]) -> tuple[str | None, bool]:
    """(generated text or None when the chunk carries none, role-only)."""
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        text = choice.get("text")
        return (text if isinstance(text, str) else None), False
    parts = [delta.get(k) for k in ("content", "reasoning_content", "reasoning")]
    text = "".join(p for p in parts if isinstance(p, str))
    if text:
        return text, False
    if "role" in delta:  # the first chunk of a chat stream announces the role, no token
        return None, True
    carries = any(isinstance(p, str) for p in parts) or bool(delta.get("tool_calls"))
    return ("" if carries else None), False


def _event(obj: Any, ns: int, reply: Reply) -> None:
    if not isinstance(obj, dict):
        raise ReplyError("malformed_sse", f"not a JSON object: {json.dumps(obj)[:80]}")
    if "error" in obj:
        raise ReplyError("stream_error", json.dumps(obj["error"])[:200])
    if obj.get("usage"):
        _running_usage(reply, obj["usage"])
        reply.usage = obj["usage"]
    choices = obj.get("choices") or ()
    if not choices or not isinstance(choices[0], dict):
        return
    choice = choices[0]
    finish = choice.get("finish_reason")
    finished_before = reply.finish_reason is not None
    if finish:
        reply.finish_reason = str(finish)
    text, role_only = _chunk_text(choice)
    if role_only or (text is None and not finish):
        return
    if finished_before and text:
        reply.problems.setdefault("tokens after finish_reason", f"{text[:40]!r} after it")
    reply.arrivals.append(ns)
    reply.texts.append(text or "")
    reply.maybe.append(not text and bool(finish))


def _running_usage(reply: Reply, new: Any) -> None:
    """A usage sent before the last one (per-chunk usage) may grow, never shrink."""
    old = reply.usage
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    before, after = old.get("completion_tokens"), new.get("completion_tokens")
    if isinstance(before, int) and isinstance(after, int) and after < before:
        reply.problems.setdefault("usage went backwards", f"completion_tokens {before} -> {after}")
    before, after = old.get("prompt_tokens"), new.get("prompt_tokens")
    if before is not None and after is not None and before != after:
        reply.problems.setdefault("prompt_tokens changed mid-stream", f"{before} -> {after}")


def read_stream(reads: list[tuple[int, bytes]]) -> Reply:
    """A streamed reply from its timestamped network reads (SSE events)."""
    reply, done = Reply(), False
    for ns, data in split_events(reads):
        if done:  # the reply ended at [DONE]; nothing after it is read
            if data.strip():
                reply.problems.setdefault("data after [DONE]", data.strip()[:60])
            continue
        if data.strip() == "[DONE]":
            done, reply.done_ns = True, ns
            continue
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            raise ReplyError("malformed_sse", f"not JSON: {data[:80]!r}") from None
        _event(obj, ns, reply)
    if not done:
        raise ReplyError("no_done", "stream ended without 'data: [DONE]'")
    return reply


def read_whole(body: bytes, chat: bool) -> tuple[str, Reply]:
    """A non-streamed reply: (its text, the reply without arrivals)."""
    try:
        obj = json.loads(body)
        choice = obj["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ReplyError("malformed_response", f"{type(exc).__name__}: {exc}") from None
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
    finish = choice.get("finish_reason")
    return text or "", Reply(usage=usage, finish_reason=str(finish) if finish else None)


def reconcile(reply: Reply, tokens: int) -> None:
    """Drop empty chunks that cannot have carried a token, given ``tokens`` in all.

    Every chunk with text carried at least one token; an empty one may have carried none.
    While there are more arrivals than tokens, closing chunks (empty, with a finish reason)
    go first, then empty chunks before any text, then the latest empty ones.
    """
    excess = len(reply.arrivals) - tokens
    for pick in (_closing, _leading, _any_empty):
        while excess > 0 and (i := pick(reply)) is not None:
            reply.drop(i)
            excess -= 1


def _closing(reply: Reply) -> int | None:
    return next((i for i in reversed(range(len(reply.maybe))) if reply.maybe[i]), None)


def _leading(reply: Reply) -> int | None:
    return 0 if reply.texts and not reply.texts[0] else None


def _any_empty(reply: Reply) -> int | None:
    return next((i for i in reversed(range(len(reply.texts))) if not reply.texts[i]), None)
