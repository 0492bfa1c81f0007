"""Eager request starts (latlab.serve.eager): the handler runs inside the read that parsed its
request, as the current task, in its own context; held tasks cancel and fail like tasks."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from latlab.serve import connections, eager
from latlab.serve.guard import GuardConfig

pytestmark = pytest.mark.skipif(not eager.SUPPORTED, reason="eager starts need Python 3.11+")

REQUEST = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}"
TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")


class _Transport(asyncio.Transport):
    """Enough of a socket for uvicorn's protocols: collects what they write."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name in ("peername", "sockname") else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None: ...


def _connection(app: Any, eager_start: bool) -> tuple[Any, _Transport, ServerState]:
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    protocol = connections.protocol_class(GuardConfig(), eager=eager_start)(
        config, state, {}, asyncio.get_running_loop()
    )
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport, state


@pytest.mark.parametrize("eager_start", [True, False])
def test_the_handler_runs_inside_the_read_that_parsed_the_request(parser, eager_start):
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(asyncio.current_task())
        async with asyncio.timeout(5):  # needs the current task, as in the guard
            body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def go() -> None:
        protocol, transport, state = _connection(app, eager_start)
        protocol.data_received(REQUEST)
        if eager_start:  # before the loop ran anything else: the task made for the request
            assert seen and seen[0] in state.tasks
            assert transport.written.startswith(b"HTTP/1.1 200")
        else:
            assert not seen
        await asyncio.sleep(0.05)
        assert seen and transport.written.endswith(b"\r\n{}\r\n0\r\n\r\n")  # chunked
        protocol.connection_lost(None)

    asyncio.run(go())


def test_each_request_keeps_its_own_context_across_its_awaits(parser):
    seen: list[tuple[str, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        before = TENANT.get()
        TENANT.set(scope["path"])  # in the first step, which runs inside data_received
        await asyncio.sleep(0.01)
        seen.append((before, TENANT.get()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def go() -> None:
        protocol, _, _ = _connection(app, True)
        protocol.data_received(REQUEST)
        await asyncio.sleep(0.05)
        protocol.data_received(REQUEST.replace(b"/x", b"/y"))
        await asyncio.sleep(0.05)
        protocol.connection_lost(None)

    asyncio.run(go())
    # set in the first step, still there after the await; never leaked into the next request
    assert seen == [("none", "/x"), ("none", "/y")]


def test_a_held_task_cancelled_before_its_first_step_closes_its_coroutine():
    closed = []

    async def handler() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            closed.append(True)

    async def go() -> None:
        holding = eager.HoldingLoop(asyncio.get_running_loop())
        task = holding.create_task(handler())
        task.cancel()
        holding.start_held()  # skips it: it never starts
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert closed == []  # never started, so no finally ran; and no "never awaited" warning


def test_first_step_errors_and_later_cancellation_reach_the_task():
    async def fails_at_once() -> None:
        raise ValueError("bad request")

    async def waits(log: list[str]) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append("cancelled inside")
            raise

    async def go() -> list[str]:
        log: list[str] = []
        holding = eager.HoldingLoop(asyncio.get_running_loop())
        failing, waiting = holding.create_task(fails_at_once()), holding.create_task(waits(log))
        holding.start_held()
        with pytest.raises(ValueError, match="bad request"):
            await failing
        await asyncio.sleep(0.01)
        waiting.cancel()  # a shutdown cancelling the task uvicorn tracks
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return log

    assert asyncio.run(go()) == ["cancelled inside"]
