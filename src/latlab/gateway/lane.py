"""The direct lane: a generation request answered from the HTTP protocol's own callbacks.

Through the ASGI path a request passes uvicorn's request task and cycle, the guard's and the
handler's coroutines, a task watching for the client leaving, and an ASGI message for every
write; and each request waits its turn in the event loop's queue before any of it, behind every
chunk read meanwhile (2 ms at 64 streams, 9 ms at 256 on the measured host: docs/gateway.md,
"The direct lane"). Most requests need none of it: their body arrives with their head, and
nothing before the upstream call has to wait (no rate limit to ask, no trimming, no cache to
read). The lane takes exactly those. In the callback that parsed the request it runs
the same checks (the guard's, then the gateway's validation, model and plan), joins or starts
the flight, and from then on writes to the connection from the flight's own callbacks: the head
once the upstream's head is in, each piece as the upstream read delivers it.

Everything else goes the ASGI path, untouched: a body not all here within ``HOLD_S`` of the
head or larger than 64 KiB, an ``Origin`` header (CORS), ``Expect: 100-continue``, a refusal
of any kind (the ASGI path checks again and sends the same error body), a limited key, a
trimming budget, a cache read. Deciding commits nothing, so a request handed over is counted
once.

Both paths share the flight: retries before the first byte, health accounting, coalescing with
requests on either path, the cache write, the error event after a broken stream, metrics.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from latlab.gateway.app import (
    CACHE_HEADER,
    ENDPOINTS,
    FirstContent,
    Gateway,
    GenerationRequest,
    broken_stream_event,
    failure_of,
    response_head,
)
from latlab.gateway.flights import Flight
from latlab.serve.guard import SMALL_BODY_BYTES, Guard, Refusal, decoded_headers

log = logging.getLogger("latlab.gateway")
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class DirectLane:
    """Decides, per complete request, whether the lane answers it (see the module docstring)."""

    def __init__(self, gateway: Gateway, guard: Guard) -> None:
        self.gateway = gateway
        self.guard = guard

    @staticmethod
    def candidate(cycle: Any) -> bool:
        """A generation request whose client is not waiting for ``100 Continue`` (the ASGI
        path sends it) before it sends the body."""
        scope = cycle.scope
        return (scope["method"] == "POST" and scope["path"] in ENDPOINTS
                and not cycle.waiting_for_100_continue)  # fmt: skip

    def take(self, protocol: Any, cycle: Any) -> bool:
        """Answer ``cycle``'s request on the lane; False: the ASGI path must (nothing done)."""
        req = self._admit(cycle)
        if req is None:
            return False
        self.gateway.metrics.direct_lane.inc()
        try:
            flight, label = self.gateway.flight_for(req)
        except Exception:  # the upstream call could not even start: as uvicorn does, a 500
            log.exception("the direct lane could not start an upstream call")
            write_whole(protocol, cycle, 500, b"Internal Server Error", "text/plain; charset=utf-8")
            return True
        DirectResponse(self.gateway, req, flight, label, protocol, cycle).start()
        return True

    def _admit(self, cycle: Any) -> GenerationRequest | None:
        scope = cycle.scope
        if len(cycle.body) > SMALL_BODY_BYTES:
            return None
        headers = decoded_headers(scope)
        if "origin" in headers:
            return None
        raw = bytes(cycle.body)
        try:
            body = self.guard.check_complete(scope, headers, raw)
        except Refusal:
            return None
        return self.gateway.accept_now(scope, headers, raw, body)


# How long a candidate's body may take after its head before the ASGI path takes the request.
HOLD_S = 0.25


class DirectResponse:
    """One client's response, written to its connection by the flight's callbacks.

    It follows the flight as an ASGI follower does (latlab.gateway.app ``_follow``), but it
    is not a task: it waits for the head through a waiter's callback, then the flight calls
    ``push`` with each new piece (the ``Relay`` interface) and ``release`` when it ends. When
    the connection's buffer is full it leaves the flight and catches up on ``resume``.
    """

    __slots__ = ("attached", "cycle", "ended", "first", "flight", "gateway", "head_sent", "label",
                 "protocol", "req", "sent")  # fmt: skip

    def __init__(
        self, gateway: Gateway, req: GenerationRequest, flight: Flight, label: str,
        protocol: Any, cycle: Any,
    ) -> None:  # fmt: skip
        self.gateway, self.req, self.flight, self.label = gateway, req, flight, label
        self.protocol, self.cycle = protocol, cycle
        self.first = FirstContent(flight, gateway.metrics.child(gateway.metrics.ttft, label),
                                  req.arrival)  # fmt: skip
        self.sent = 0
        self.head_sent = self.attached = self.ended = False

    def start(self) -> None:
        self.protocol.direct = self
        task = self.flight.task
        if task is not None:  # the server's drain waits for it; a cut call closes the client
            tasks = self.protocol.tasks
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(self._task_ended)
        self.advance()

    def advance(self, _changed: Any = None) -> None:
        """Write whatever the flight has that this client has not got; end with the flight."""
        if self.ended:
            return
        if self.protocol.transport.is_closing():  # closed by the server (a parse error, a drain)
            self.client_gone()
            return
        flight = self.flight
        head = b""
        if not self.head_sent:
            if not (flight.done or (flight.head_ready and flight.streaming)):
                flight.waiter().add_done_callback(self.advance)
                return
            head = self._head()
            if head is None:
                return
        if self.protocol.flow.write_paused:
            self.protocol.transport.write(head)
            return  # ``resume`` picks up from here
        out = head + self._new_bytes()  # one write (one system call) where it can be
        if flight.done:
            self._end_stream(out)
            return
        self.protocol.transport.write(out)
        if not self.attached:
            self.attached = True
            flight.attach(self)

    # ---- the flight's relay interface (latlab.gateway.relay) --------------------------------

    def push(self, pieces: list[bytes]) -> bool:
        """A new piece arrived; False detaches this client (its connection's buffer is full,
        or the connection is closing)."""
        if self.protocol.transport.is_closing():
            self.client_gone()
            return False
        self.protocol.transport.write(self._new_bytes())
        if self.protocol.flow.write_paused:
            self.attached = False
            return False
        return True

    def release(self) -> None:
        """The flight ended (the only time it releases an attached follower)."""
        self.attached = False
        self.advance()

    # ---- the connection's events ------------------------------------------------------------

    def resume(self) -> None:
        """The connection's buffer drained."""
        self.advance()

    def client_gone(self) -> None:
        """The connection was lost: stop following; the last follower out cancels the call."""
        if self.ended:
            return
        if self.attached:
            self.flight.detach(self)
            self.attached = False
        self._leave()

    def _task_ended(self, _task: Any) -> None:
        """The flight's task stopped without finishing it (cancelled at the drain's deadline,
        or the gateway closing): the client's connection is closed, as for an ASGI task."""
        if not self.ended and not self.flight.done:
            self.client_gone()
            self.protocol.transport.close()

    # ---- writing ----------------------------------------------------------------------------

    def _head(self) -> bytes | None:
        """A stream's head, to be written; None once a whole response has been written."""
        flight, req = self.flight, self.req
        failure = failure_of(flight)
        if failure is not None:
            status, body = self.gateway.failure_answer(req.endpoint, failure)
            payload = json.dumps(body, separators=(",", ":")).encode()
            self._whole(status, payload, "application/json", {CACHE_HEADER: "bypass"})
            return None
        metrics = self.gateway.metrics
        metrics.child(metrics.requests, req.endpoint, str(flight.status)).inc()
        head = response_head(req, flight, self.label)
        if not flight.streaming:  # sent whole once complete, as the ASGI path does
            content_type = head.pop("content-type")
            self._whole(flight.status, b"".join(flight.pieces), content_type, head)
            return None
        self.head_sent = True
        return head_bytes(self.protocol, self.cycle, flight.status, head, chunked=True)

    def _whole(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        self._leave()
        write_whole(self.protocol, self.cycle, status, body, content_type, extra)

    def _new_bytes(self) -> bytes:
        """The pieces this client has not got, as one HTTP chunk (b"" when none)."""
        pieces = self.flight.pieces
        n = len(pieces)
        if self.sent >= n:
            return b""
        data = pieces[self.sent] if n - self.sent == 1 else b"".join(pieces[self.sent : n])
        self.first.check(n)
        self.sent = n
        return b"%x\r\n%b\r\n" % (len(data), data)

    def _end_stream(self, out: bytes) -> None:
        """Write ``out``, the error event of a broken stream, and the stream's end."""
        event = broken_stream_event(self.flight)
        self._leave()
        tail = b"%x\r\n%b\r\n0\r\n\r\n" % (len(event), event) if event else b"0\r\n\r\n"
        self.protocol.transport.write(out + tail)
        end_response(self.protocol, self.cycle)

    def _leave(self) -> None:
        """Stop following the flight, once (the next request on the connection may start)."""
        self.ended = True
        if self.protocol.direct is self:
            self.protocol.direct = None
        self.gateway.flights.leave(self.flight)


def head_bytes(
    protocol: Any, cycle: Any, status: int, headers: dict[str, str], *, chunked: bool,
    length: int = 0,
) -> bytes:  # fmt: skip
    """A response head as uvicorn writes one (its default ``server``/``date`` headers first)."""
    parts = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    for name, value in protocol.server_state.default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in headers.items():
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"transfer-encoding: chunked\r\n\r\n" if chunked
                 else b"content-length: %d\r\n\r\n" % length)  # fmt: skip
    return b"".join(parts)


def write_whole(
    protocol: Any, cycle: Any, status: int, body: bytes, content_type: str,
    extra: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """A complete response with a body of known length, and the cycle's end."""
    headers = {"content-type": content_type, **(extra or {})}
    head = head_bytes(protocol, cycle, status, headers, chunked=False, length=len(body))
    protocol.transport.write(head + body)
    end_response(protocol, cycle)


def end_response(protocol: Any, cycle: Any) -> None:
    """What uvicorn does after a response's last byte: close without keep-alive, then let
    the connection read its next request (or arm its keep-alive timer)."""
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        protocol.transport.close()
    cycle.on_response()


class _DirectLaneProtocol:
    """Mixed into latlab.serve.connections' httptools protocol: the lane's seams in uvicorn.

    uvicorn builds each request's cycle when its head is parsed and starts the ASGI task at
    once. Here a lane candidate's task is held until its body is complete, then the lane
    decides. Many clients (httpx, so OpenAI's SDK) write the head and the body separately, so
    the body often comes a read later. A body larger than the lane takes, or not complete
    within ``HOLD_S`` of the head, goes the ASGI path, whose body deadline (``--body-timeout``)
    starts then. The connection's loss and its buffer draining are passed to the request the
    lane is answering (``direct``).
    """

    lane: DirectLane
    direct: DirectResponse | None = None
    _held: tuple[Any, Any] | None = None  # (cycle, app) of a candidate whose body is arriving
    _hold_timer: Any = None

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if app is self.config.loaded_app and self.lane.candidate(cycle):  # type: ignore[attr-defined]
            if cycle.more_body:
                self._held = (cycle, app)
                self._hold_timer = self.loop.call_later(HOLD_S, self._hand_over)  # type: ignore[attr-defined]
                return
            if self.lane.take(self, cycle):  # a pipelined request, read in full meanwhile
                return
        super()._start_asgi_task(cycle, app)  # type: ignore[misc]

    def _release_hold(self) -> tuple[Any, Any] | None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        held, self._held = self._held, None
        return held

    def _hand_over(self) -> None:
        """The held request goes the ASGI path (its body is slow or large)."""
        held = self._release_hold()
        if held is not None and not self.transport.is_closing():  # type: ignore[attr-defined]
            super()._start_asgi_task(*held)  # type: ignore[misc]

    def on_body(self, body: bytes) -> None:
        super().on_body(body)  # type: ignore[misc]
        held = self._held
        if held is not None and len(held[0].body) > SMALL_BODY_BYTES:
            self._hand_over()  # uvicorn pauses reading above 64 KiB: the ASGI path resumes it

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        held = self._held
        if held is not None and held[0] is self.cycle:  # type: ignore[attr-defined]
            self._release_hold()
            if not self.lane.take(self, held[0]):
                super()._start_asgi_task(*held)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._release_hold()
        if self.direct is not None:
            self.direct.client_gone()
        super().connection_lost(exc)  # type: ignore[misc]

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self.direct is not None:
            self.direct.resume()


def lane_protocol(base: type, lane: DirectLane) -> type:
    """``base`` (an httptools protocol class of latlab.serve.connections) with the lane."""
    return type(f"Direct{base.__name__}", (_DirectLaneProtocol, base), {"lane": lane})
