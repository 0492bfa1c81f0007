"""uvicorn's HTTP/1.1 protocol with a deadline on request heads and a cap on open connections.

uvicorn times out idle keep-alive connections but not a connection that never finishes its
request head: 400 half-sent requests held their sockets for minutes, and with a low file limit
they locked every normal client out. Here a request head must arrive within
``header_timeout_s`` of the connection opening (or of its first byte on a reused connection),
else the connection gets a 408 and is closed; beyond ``max_connections`` open connections, a
new one is answered 503 as soon as its head arrives and closed. The body's own deadline is the
ASGI guard's (latlab.serve.guard), which can answer with a JSON error.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from latlab.serve.guard import (
    RETRY_AFTER_S,
    GuardConfig,
    Receive,
    Scope,
    Send,
    error_body,
    send_json,
)


def protocol_class(config: GuardConfig) -> type[H11Protocol]:
    """An H11Protocol subclass enforcing ``config``'s head timeout and connection cap."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": config.header_timeout_s, "max_connections": config.max_connections},
    )


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0
    max_connections: int = 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            self.app = _over_capacity  # answered once the head arrives; then closed
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
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

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._awaiting_head():
            return
        # h11 cannot send a response before a request arrived; write the bytes directly.
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
