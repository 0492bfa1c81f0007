"""One upstream call, shared by every client that asked for the same thing (coalescing).

A ``Flight`` owns the call: it picks an upstream, retries once on another when the first fails
before its first byte (never after), and keeps every piece of the response as it arrives. Each
client follows the flight with its own cursor, so a client that joins late gets what was already
sent, then the rest. A client that leaves only stops its own cursor; the upstream call is
cancelled when the last one leaves. Streams are forwarded in whole SSE events, so a stream cut
mid-way never shows a client half an event before the error event that reports the cut.

The flight's reads come straight from the raw HTTP client's ``data_received`` (it is that
client's ``reads`` sink), so a piece reaches the followers one event-loop step after its bytes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from latlab.bench.rawhttp import HTTPStreamError
from latlab.gateway.recording import (
    DONE_EVENT,
    Recording,
    SSESplitter,
    answer_events,
    is_error_event,
    tokens_spent,
    usage_of,
)
from latlab.gateway.relay import Relay, start_eagerly
from latlab.gateway.upstreams import Upstream

# Statuses that mean "this upstream cannot take it now": retried once on another upstream.
RETRY_STATUSES = frozenset({502, 503, 504})
_now = time.perf_counter_ns


class UpstreamFailure(Exception):
    """No upstream produced a response; becomes a 502/503 with the reason."""

    def __init__(self, message: str, *, status: int = 502, code: str = "upstream_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(kw_only=True, slots=True)
class Call:
    """What to send upstream."""

    endpoint: str  # "/completions" or "/chat/completions"
    body: bytes
    headers: dict[str, str]
    tokens: int  # prompt estimate + max tokens: the load this call puts on an upstream
    timeout_s: float


# (upstreams already tried) -> (the next upstream, whether another would remain), or None.
Pick = Callable[[Sequence[Upstream]], "tuple[Upstream, bool] | None"]


def has_content(event: bytes) -> bool:
    """Does this SSE event carry generated content (not a role-only or usage-only chunk)?"""
    if event.startswith(DONE_EVENT) or b'"choices":[]' in event:
        return False
    try:
        obj = json.loads(event[event.index(b"{") :])
        choice = obj["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        if delta.get("role") and not delta.get("content"):
            return False
        return any(delta.get(k) is not None for k in ("content", "reasoning_content", "reasoning"))
    return "text" in choice


class _Attempt:
    """The raw client's sink for one try: passes reads to the flight unless they are discarded."""

    __slots__ = ("count", "discarded", "flight", "may_retry", "status")

    def __init__(self, flight: Flight, may_retry: bool) -> None:
        self.flight = flight
        self.may_retry = may_retry
        self.discarded = False
        self.count = 0
        self.status = 0

    def on_head(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        if status in RETRY_STATUSES and self.may_retry:
            self.discarded = True  # the client never sees it: another upstream will answer
            return
        self.flight.set_head(status, headers)

    def append(self, item: tuple[int, bytes]) -> None:
        self.count += 1
        if not self.discarded:
            self.flight.add(item[0], item[1])

    def __len__(self) -> int:
        return self.count


class Flight:
    """The state of one upstream call and the pieces its followers read."""

    def __init__(
        self, *, key: str | None, metrics: Any, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.key = key
        # The loop it runs in, when the caller knows it: on Python 3.11 every
        # asyncio.get_running_loop() is a getpid() system call, a few per request otherwise.
        self.loop = loop
        self.metrics = metrics
        self.status = 0
        self.content_type = "application/json"
        self.head_ready = False
        self.failure: UpstreamFailure | None = None  # set when nothing was ever sent
        self.error: str | None = None  # set when the call broke after its head
        self.done = False
        self.pieces: list[bytes] = []
        self.first_content = -1  # index of the piece with the first content event
        self.followers = 0
        self.upstream: Upstream | None = None
        self.task: asyncio.Task[None] | None = None
        self.send_ns = 0
        self.usage: dict[str, Any] | None = None
        self._splitter: SSESplitter | None = None
        self._events: list[bytes] = []
        self._arrivals_ns: list[int] = []  # each event's arrival (offsets made when recorded)
        self._saw_done = False
        self._bad_event = False
        self._waiters: list[asyncio.Future[None]] = []
        self._relays: list[Relay] = []  # caught-up followers this flight writes to itself

    # ---- followers ---------------------------------------------------------------------------

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the flight's next change (head, piece, end)."""
        fut = (self.loop or asyncio.get_running_loop()).create_future()
        self._waiters.append(fut)
        return fut

    def attach(self, relay: Relay) -> None:
        """Each new piece is written to ``relay`` as it arrives (latlab.gateway.relay)."""
        if self.done:
            relay.release()
        else:
            self._relays.append(relay)

    def detach(self, relay: Relay) -> None:
        if relay in self._relays:
            self._relays.remove(relay)

    def _push(self) -> None:
        relays = self._relays
        for relay in relays[:] if len(relays) > 1 else relays:
            if not relay.push(self.pieces):
                self.detach(relay)

    def _release(self) -> None:
        relays, self._relays = self._relays, []
        for relay in relays:
            relay.release()

    # ---- the sink ----------------------------------------------------------------------------

    def set_head(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.content_type = headers.get("content-type", "application/json")
        if status == 200 and self.content_type.startswith("text/event-stream"):
            self._splitter = SSESplitter()
        self.head_ready = True
        if self.upstream is not None:
            self.metrics.child(self.metrics.upstream_latency, self.upstream.url).observe(
                (_now() - self.send_ns) / 1e9
            )
        self._notify()

    def add(self, ns: int, data: bytes) -> None:
        splitter = self._splitter
        if splitter is None:
            self.pieces.append(data)
            self._notify()
            return
        if splitter.pending or data.find(b"\n\n") != len(data) - 2:
            events = splitter.feed(data)
            if not events:
                return
            for event in events:
                self._keep(ns, event)
            data = events[0] if len(events) == 1 else b"".join(events)
        else:  # the usual read: exactly one whole event
            self._keep(ns, data)
        self.pieces.append(data)
        if self._relays:
            self._push()
        if self._waiters:
            self._notify()

    def _keep(self, ns: int, event: bytes) -> None:
        """Record one event; note the first content, the end marker, errors and usage."""
        self._events.append(event)
        self._arrivals_ns.append(ns)
        if self.first_content < 0 and has_content(event):
            self.first_content = len(self.pieces)
        if event.startswith(DONE_EVENT):
            self._saw_done = True
        elif is_error_event(event):
            self._bad_event = True
        elif b'"usage"' in event:  # the usage chunk (the last but one), or a null usage
            usage = usage_of(event)
            if usage is not None:
                self.usage = usage

    # ---- the call ----------------------------------------------------------------------------

    async def run(
        self, call: Call, pick: Pick, *, eject_after: int, after: Callable[[Flight], Awaitable]
    ) -> None:
        """Call an upstream (one retry elsewhere before any byte), then run ``after``."""
        tried: list[Upstream] = []
        failure: UpstreamFailure | None = None
        for attempt in (1, 2):
            choice = pick(tried)
            if choice is None:
                break
            up, others_left = choice
            tried.append(up)
            sink = _Attempt(self, attempt == 1 and others_left)
            failure = await self._try(up, call, sink, eject_after)
            if failure is None:
                await after(self)
                return
            if not (attempt == 1 and others_left):
                break
            self.metrics.retries.inc()
        self.failure = failure or UpstreamFailure(
            "no healthy upstream can take this request; see GET /health", status=503,
            code="no_healthy_upstream",
        )  # fmt: skip
        self._finish()

    async def _try(
        self, up: Upstream, call: Call, sink: _Attempt, eject_after: int
    ) -> UpstreamFailure | None:
        self.upstream = up
        up.begin(call.tokens)
        self.send_ns = _now()
        try:
            headers = {**call.headers, **up.auth} if up.auth else call.headers
            await up.pool.post(up.path(call.endpoint), call.body, headers, sink,  # type: ignore[arg-type]
                               call.timeout_s, on_head=sink.on_head)  # fmt: skip
        except HTTPStreamError as exc:
            self.metrics.child(self.metrics.upstream_requests, up.url, exc.reason).inc()
            if not self.head_ready:
                up.failed(f"{exc.reason}: {exc}", eject_after=eject_after)
                return UpstreamFailure(f"upstream {up.url} failed before responding "
                                       f"({up.last_error})")  # fmt: skip
            self.error = f"upstream {up.url} broke off the response ({exc.reason}: {exc})"
            self._finish()
            return None
        finally:
            up.end(call.tokens)
        self.metrics.child(self.metrics.upstream_requests, up.url, f"http_{sink.status}").inc()
        if sink.discarded:
            return UpstreamFailure(f"upstream {up.url} answered HTTP {sink.status}", status=503)
        up.succeeded()
        self._finish()
        return None

    def _finish(self) -> None:
        if self._splitter is not None and self._splitter.pending.strip():
            self._bad_event = True  # a last event without its blank line: incomplete
        self.done = True
        if self.usage is None and self.status == 200 and self._splitter is None:
            self.usage = self.recording().usage
        self._release()
        self._notify()

    # ---- results -----------------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        """A 200 server-sent-event stream (forwarded piece by piece as it arrives)."""
        return self._splitter is not None

    @property
    def complete(self) -> bool:
        """A whole, successful response: the only kind ever cached."""
        if not self.done or self.error or self.failure or self.status != 200:
            return False
        if self._splitter is not None:
            return self._saw_done and not self._bad_event
        try:
            obj = json.loads(b"".join(self.pieces))
        except ValueError:
            return False
        return isinstance(obj, dict) and "error" not in obj

    def tokens(self, prompt_estimate: int) -> int:
        """What this answer spends from a tokens/min budget; 0 unless it was a 200."""
        if not self.head_ready or self.status != 200:
            return 0
        if self._splitter is not None:
            answer = answer_events(self._events)
        else:
            answer = sum(len(piece) for piece in self.pieces) // 4
        return tokens_spent(self.usage, prompt=prompt_estimate, answer=answer)

    def recording(self) -> Recording:
        stream = self._splitter is not None
        return Recording(
            status=self.status,
            content_type=self.content_type,
            stream=stream,
            events=list(self._events) if stream else [],
            offsets_ms=[(t - self.send_ns) / 1e6 for t in self._arrivals_ns] if stream else [],
            body=b"" if stream else b"".join(self.pieces),
            created_s=time.time(),
        )

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.error = self.error or "cancelled: every client left"
        self.done = True
        self._release()


class Flights:
    """Flights in progress by cache key, so identical requests share one."""

    def __init__(self) -> None:
        self._by_key: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def join(self, key: str | None) -> Flight | None:
        flight = self._by_key.get(key) if key is not None else None
        if flight is None or flight.failure is not None or flight.error is not None:
            return None
        flight.followers += 1
        return flight

    def start(self, flight: Flight, work: Coroutine[Any, Any, None]) -> None:
        """Register ``flight`` and run ``work`` eagerly (its upstream request is sent now)."""
        flight.followers = 1
        if flight.key is not None:
            self._by_key[flight.key] = flight
        try:
            flight.task = start_eagerly(work, flight.loop)
        except BaseException:
            self._forget(flight)
            raise
        if flight.task is None:
            self._forget(flight)
        else:
            flight.task.add_done_callback(lambda _: self._forget(flight))

    def leave(self, flight: Flight) -> None:
        flight.followers -= 1
        if flight.followers <= 0 and not flight.done:
            self._forget(flight)
            flight.cancel()

    def _forget(self, flight: Flight) -> None:
        if flight.key is not None and self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]
