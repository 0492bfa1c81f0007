"""Run the gateway under uvicorn (httptools + uvloop when installed): bind, start, print ready.

The socket is bound first, so a port in use fails at once with a one-line error; the ready line
is printed once the upstreams have been checked and uvicorn accepts connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from latlab.gateway.app import Gateway
from latlab.gateway.config import GatewayConfig
from latlab.serve.server import bind_socket, url_of

READY_PREFIX = "latlab gateway: ready at "


class _Server(uvicorn.Server):
    """uvicorn.Server that leaves signals to us: uvicorn re-raises SIGTERM after a clean stop,
    and the process would end with -15 instead of 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _stop_on_signals(server: uvicorn.Server) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if server.should_exit:  # a second Ctrl-C: stop waiting for open streams
            server.force_exit = True
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)


def _uvicorn(app: Any, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        backlog=4096,
    )
    return _Server(config)


def _describe(gateway: Gateway) -> str:
    config = gateway.config
    cache = config.cache if gateway.cache is None else gateway.cache.store.label
    keys = f"{len(gateway.keys)} keys" if gateway.keys is not None else "no keys"
    return (
        f"{len(gateway.upstreams.all)} upstream(s), route {config.route}, cache {cache}, "
        f"coalescing {'on' if config.coalesce else 'off'}, {keys}"
    )


async def _serve(gateway: Gateway, sock: Any, log_level: str) -> None:
    server = _uvicorn(gateway, log_level)
    _stop_on_signals(server)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if server.started:
        print(f"{READY_PREFIX}{url_of(sock)}/v1 ({_describe(gateway)})", flush=True)
    await task


def serve(
    config: GatewayConfig, *, host: str = "127.0.0.1", port: int = 8100, log_level: str = "warning"
) -> None:
    """Run ``latlab gateway`` until SIGINT/SIGTERM (blocking)."""
    logging.basicConfig(format="latlab gateway: %(message)s", level=logging.WARNING)
    gateway = Gateway(config)
    sock = bind_socket(host, port)
    try:
        _run(_serve(gateway, sock, log_level))
    finally:
        sock.close()
    print("latlab gateway: stopped", file=sys.stderr, flush=True)


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


@contextlib.contextmanager
def running_gateway(
    config: GatewayConfig, host: str = "127.0.0.1", port: int = 0
) -> Iterator[tuple[str, Gateway]]:
    """The gateway in a background thread, for tests and benchmarks: (base URL, gateway)."""
    gateway = Gateway(config)
    sock = bind_socket(host, port)
    server = _uvicorn(gateway, "warning")
    thread = threading.Thread(
        target=lambda: _run(server.serve(sockets=[sock])), name="latlab-gateway", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.005)
        yield url_of(sock), gateway
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
