"""uvicorn's HTTP/1.1 protocols with a deadline on request heads and a cap on open connections.

uvicorn times out idle keep-alive connections but not a connection that never finishes its
request head: 400 half-sent requests held their sockets for minutes, and with a low file limit
they locked every normal client out. Here a request head must arrive within
``header_timeout_s`` of the connection opening (or of its first byte on a reused connection),
else the connection gets a 408 and is closed; beyond ``max_connections`` open connections, a
new one is answered 503 as soon as its head arrives and closed. The body's own deadline is the
ASGI guard's (latlab.serve.guard), which can answer with a JSON error.

Each request's scope also carries when its first byte was parsed (``HEAD_NS_KEY`` in its
state): a handler starts one event-loop turn after that at best, and behind every other
callback of that turn when the process is busy, so what a request waited is ``now - head``.

Both of uvicorn's parsers get the same rules. httptools (C) is used when it is installed: it
costs about a third less CPU per streamed chunk than h11 (pure Python), which is what a proxy
forwarding thousands of chunks a second spends its time on; h11 is the fallback.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional (latlab[gateway] installs it)
    HttpToolsProtocol = None

from latlab.errors import ConfigError
from latlab.serve.guard import (
    HEAD_NS_KEY,
    RETRY_AFTER_S,
    GuardConfig,
    Receive,
    Scope,
    Send,
    error_body,
    send_json,
)

# "auto": httptools when importable, else h11. LATLAB_HTTP_PARSER=h11 is the way back should
# httptools misbehave somewhere; tests and benchmarks/gateway.py pin each parser in turn.
PREFERRED_PARSER = os.environ.get("LATLAB_HTTP_PARSER", "auto")


def protocol_class(config: GuardConfig, parser: str | None = None) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol enforcing ``config``'s head timeout and connection cap."""
    base = _parser_class(parser or PREFERRED_PARSER)
    return type(
        f"Guarded{base.__name__}",
        (base,),
        {"header_timeout_s": config.header_timeout_s, "max_connections": config.max_connections},
    )


def _parser_class(parser: str) -> type[asyncio.Protocol]:
    if parser not in ("auto", "h11", "httptools"):
        raise ConfigError(
            f"unknown HTTP parser {parser!r} (LATLAB_HTTP_PARSER): auto, h11 or httptools"
        )
    if parser == "h11":
        return GuardedH11Protocol
    if HttpToolsProtocol is not None:
        return GuardedHttpToolsProtocol
    if parser == "httptools":
        raise ConfigError("the httptools HTTP parser is not installed: pip install httptools")
    return GuardedH11Protocol


class _HeadDeadline:
    """The connection cap and the head deadline, for either parser's protocol.

    The parser-specific part is ``_awaiting_head``: whether the connection is between requests
    or inside a request head (no request is being answered).
    """

    header_timeout_s: float = 10.0
    max_connections: int = 1024
    _head_timer: asyncio.TimerHandle | None = None

    def _limit_connection(self: Any) -> None:
        if len(self.connections) > self.max_connections:
            self.app = _over_capacity  # answered once the head arrives; then closed
        self._arm_head_timer()

    def _arm_head_timer(self: Any) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self: Any) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._awaiting_head():
            return
        # Neither parser can send a response before a request arrived; write the bytes directly.
        body = json.dumps(
            error_body(
                f"the request head did not arrive within {self.header_timeout_s:g} s "
                "(--header-timeout)",
                "invalid_request_error",
                code="request_timeout",
            )
        ).encode()
        head = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self.transport.close()


class GuardedH11Protocol(_HeadDeadline, H11Protocol):
    _head_ns = 0  # when the first byte of the head being read arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._limit_connection()

    def data_received(self, data: bytes) -> None:
        if not self._head_ns and self._awaiting_head():
            self._head_ns = time.perf_counter_ns()
        scope = getattr(self, "scope", None)
        super().data_received(data)
        if self._head_ns and getattr(self, "scope", None) is not scope:  # a request began
            self.scope.setdefault("state", {})[HEAD_NS_KEY] = self._head_ns
            self._head_ns = 0
        if self._awaiting_head():
            self._arm_head_timer()
        else:
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined, unfinished head is already buffered: its clock starts now. (An idle
        # connection is left to uvicorn's keep-alive timeout, which closes it silently.)
        if self._awaiting_head() and self.conn.trailing_data[0]:
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE


class GuardedHttpToolsProtocol(_HeadDeadline, HttpToolsProtocol or object):  # type: ignore[misc]
    """httptools reports a head's first byte and its end as callbacks.

    ``_in_head`` runs from the connection opening or a request's first byte to its last header;
    the clock runs only while no response is being written, as with h11.
    """

    _in_head = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._limit_connection()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope.setdefault("state", {})[HEAD_NS_KEY] = time.perf_counter_ns()
        self._in_head = True
        if not self._answering():
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_head:  # a pipelined, unfinished head: its clock starts now
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _awaiting_head(self) -> bool:
        return self._in_head and not self._answering()


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> Any:
    await send_json(
        send,
        503,
        error_body(
            "the server has as many open connections as it accepts (--max-connections); "
            "retry later or reuse a connection",
            "service_unavailable",
            code="too_many_connections",
        ),
        {"Retry-After": str(RETRY_AFTER_S)},
    )
