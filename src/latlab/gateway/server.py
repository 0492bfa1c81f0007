"""Run the gateway behind latlab serve's own HTTP protection and server.

The same rules as ``latlab serve`` (latlab.serve.guard): Host and Origin allow-lists, JSON-only
bodies with size, depth and shape limits, a body read timeout, a request-head deadline and a
connection cap, drain-then-end shutdown. The socket is bound first, so a port in use fails at
once; the ready line is printed once the upstreams have been checked and connections are taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from latlab.gateway.app import Gateway
from latlab.gateway.config import GatewayConfig
from latlab.gateway.lane import DirectLane, lane_protocol
from latlab.serve.connections import GuardedHttpToolsProtocol, protocol_class
from latlab.serve.guard import Drain, Guard, GuardConfig
from latlab.serve.options import ServeOptions
from latlab.serve.server import bind_socket, serve_app, url_of, uvicorn_server

READY_PREFIX = "latlab gateway: ready at "
# The gateway does not know its upstreams' contexts when it starts: request limits (body size,
# token-id prompt length) default to those of a 128k-token model; flags override each one.
LIMITS_CONTEXT = 131072


def guarded(gateway: Gateway, options: ServeOptions, drain: Drain) -> tuple[Guard, GuardConfig]:
    guard = options.guard_for_context(LIMITS_CONTEXT)
    return Guard(gateway, guard, drain), guard


def http_protocol(gateway: Gateway, app: Guard, guard: GuardConfig) -> type[asyncio.Protocol]:
    """The HTTP protocol: with the direct lane (latlab.gateway.lane) unless it is turned off
    or the parser is h11 (the lane rides on the httptools protocol's callbacks)."""
    base = protocol_class(guard)
    if not gateway.config.direct_lane or not issubclass(base, GuardedHttpToolsProtocol):
        return base
    return lane_protocol(base, DirectLane(gateway, app))


def gateway_server(gateway: Gateway, options: ServeOptions, drain: Drain) -> Any:
    """The uvicorn server answering for ``gateway`` behind the guard."""
    app, guard = guarded(gateway, options, drain)
    return uvicorn_server(app, guard=guard, drain=drain, log_level=options.log_level,
                          shutdown_timeout_s=options.shutdown_timeout_s,
                          protocol=http_protocol(gateway, app, guard))  # fmt: skip


def describe(gateway: Gateway) -> str:
    """What the ready line says about the gateway's settings."""
    config = gateway.config
    cache = config.cache if gateway.cache is None else gateway.cache.store.label
    keys = f"{len(gateway.keys)} keys" if gateway.keys is not None else "no keys"
    return (
        f"{len(gateway.upstreams.all)} upstream(s), route {config.route}, cache {cache}, "
        f"coalescing {'on' if config.coalesce else 'off'}, {keys}"
    )


async def _serve(
    gateway: Gateway, sock: Any, options: ServeOptions, on_ready: Any, name: str
) -> None:
    """Serve ``gateway`` on ``sock`` until a signal; ``on_ready(url)`` once it accepts."""
    server = gateway_server(gateway, options, Drain())
    await gateway.start()
    try:
        report = await serve_app(server, sock, on_ready)
    finally:
        await gateway.close()
    print(report.line(name), file=sys.stderr, flush=True)


def serve(config: GatewayConfig, options: ServeOptions | None = None) -> None:
    """Run ``latlab gateway`` until SIGINT/SIGTERM (blocking)."""
    options = options or ServeOptions(port=8100)
    logging.basicConfig(format="latlab gateway: %(message)s", level=logging.WARNING)
    gateway = Gateway(config)
    sock = bind_socket(options.host, options.port)

    def ready(url: str) -> None:
        print(f"{READY_PREFIX}{url}/v1 ({describe(gateway)})", flush=True)

    try:
        _run(_serve(gateway, sock, options, ready, "latlab gateway"))
    finally:
        sock.close()


def serve_worker(
    config: GatewayConfig, options: ServeOptions, sock: Any, *, on_ready: Any, name: str
) -> None:
    """One of ``latlab gateway --workers N``'s processes (latlab.gateway.workers)."""
    logging.basicConfig(format=f"{name}: %(message)s", level=logging.WARNING)
    try:
        _run(_serve(Gateway(config), sock, options, lambda _url: on_ready(), name))
    finally:
        sock.close()


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


@contextlib.contextmanager
def running_gateway(
    config: GatewayConfig, options: ServeOptions | None = None
) -> Iterator[tuple[str, Gateway]]:
    """The gateway in a background thread, for tests and benchmarks: (base URL, gateway)."""
    options = options or ServeOptions(port=0, allowed_hosts=("127.0.0.1",))
    gateway = Gateway(config)
    sock = bind_socket(options.host, options.port)
    server = gateway_server(gateway, options, Drain())
    started = threading.Event()

    async def run() -> None:
        await gateway.start()
        started.set()
        try:
            await server.serve(sockets=[sock])
        finally:
            await gateway.close()

    thread = threading.Thread(target=lambda: _run(run()), name="latlab-gateway", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not (started.is_set() and server.started):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.005)
        yield url_of(sock), gateway
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
