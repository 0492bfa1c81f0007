"""Run an app under uvicorn: bind first, print one ready line, drain on shutdown.

The socket is bound before the model loads so a port already in use fails in milliseconds,
not after the engine spent seconds loading. The ready line is printed only once uvicorn is
accepting connections, so scripts can wait for it instead of polling.

Shutdown (SIGINT or SIGTERM) stops accepting, refuses new requests on open connections with
503, lets requests in flight finish for ``shutdown_timeout_s``, then calls ``on_deadline``
(which ends the rest with an error event or a JSON 503), logs one line and returns: the
process exits 0. A second signal skips the wait. ``serve_app`` is torch-free, so the gateway
runs the same way.

Before accepting, everything startup allocated is moved out of the garbage collector's sight
(``freeze_startup_heap``): a full collection walked the ~400,000 objects of torch,
transformers and the app, and one triggered by a burst of 800 connections held the event loop
for 0.7-0.8 s (measured: docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from latlab.engine.config import EngineConfig
from latlab.errors import ConfigError
from latlab.serve.connections import protocol_class
from latlab.serve.guard import Drain, GuardConfig
from latlab.serve.options import ServeOptions
from latlab.serve.prep import PrepProcess

READY_PREFIX = "latlab serve: ready at "
# A stop signal repeated within this long counts once (see _install_signals).
REPEAT_WINDOW_S = 0.5
# After on_deadline, requests get this long to write their final event before being cancelled.
_END_GRACE_S = 2.0


@dataclass(kw_only=True, slots=True)
class ShutdownReport:
    """What a shutdown did to the requests in flight (logged as one line)."""

    in_flight: int = 0
    ended: int = 0
    timeout_s: float = 0.0

    def line(self, name: str) -> str:
        if not self.in_flight:
            return f"{name}: stopped"
        finished = self.in_flight - self.ended
        text = f"{name}: stopped; {finished} of {self.in_flight} requests in flight finished"
        if self.ended:
            text += (
                f", {self.ended} ended by the {self.timeout_s:g} s shutdown timeout "
                "(a JSON 503 or an error event)"
            )
        return text


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening-ready TCP socket; ConfigError (not a traceback) when the port is taken.

    ``reuse_port``: SO_REUSEPORT, so several processes can each listen on the same port and the
    kernel spreads connections over them (``latlab gateway --workers``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose
    # proto says TCP, and accepted sockets inherit it. With proto 0, a small SSE chunk waits
    # for the client's delayed ACK: about 40 ms added to TTFT (measured here: 47 -> 5 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port} ({reason}); pick another --port or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class _Uvicorn(uvicorn.Server):
    """uvicorn.Server whose signal handling and shutdown we own."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain: Drain,
        shutdown_timeout_s: float,
        on_deadline: Callable[[], Awaitable[None]] | None,
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.shutdown_timeout_s = shutdown_timeout_s
        self.on_deadline = on_deadline
        self.report = ShutdownReport(timeout_s=shutdown_timeout_s)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal after serving, which would kill the process before
        # the engine is shut down; we install plain handlers instead.
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.start()
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle ones close now, busy ones after their response
        self.report.in_flight = len(self.server_state.tasks)
        if not await self._tasks_done_within(self.shutdown_timeout_s):
            self.report.ended = len(self.server_state.tasks)
            if self.on_deadline is not None:
                await self.on_deadline()
            if not await self._tasks_done_within(_END_GRACE_S):
                for task in list(self.server_state.tasks):
                    task.cancel()
        for server in self.servers:
            await server.wait_closed()

    async def _tasks_done_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.server_state.tasks and not self.force_exit:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return not self.server_state.tasks


def _install_signals(server: uvicorn.Server) -> None:
    """SIGINT/SIGTERM: drain; a second one, REPEAT_WINDOW_S or more later: stop waiting.

    A repeat within the window is the same request delivered twice (systemd's default
    KillMode signals every process of the service, and ``latlab gateway --workers``' supervisor
    passes the signal on too), so it must not cut the streams a drain would finish.
    """
    loop = asyncio.get_running_loop()
    first: list[float] = []

    def stop() -> None:
        now = time.monotonic()
        if server.should_exit and first and now - first[0] >= REPEAT_WINDOW_S:
            server.force_exit = True  # a second Ctrl-C: stop waiting for open requests
        if not first:
            first.append(now)
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)


def uvicorn_server(
    app: Any,
    *,
    guard: GuardConfig,
    drain: Drain,
    log_level: str = "warning",
    shutdown_timeout_s: float = 5.0,
    on_deadline: Callable[[], Awaitable[None]] | None = None,
    protocol: type[asyncio.Protocol] | None = None,
) -> _Uvicorn:
    """A uvicorn server with the guard's connection limits and our drain-then-end shutdown;
    ``protocol``: an HTTP protocol class of one's own (built on ``protocol_class(guard)``)."""
    config = uvicorn.Config(
        app,
        http=protocol or protocol_class(guard),
        log_level=log_level,
        access_log=False,
        lifespan="off",
    )
    return _Uvicorn(
        config, drain=drain, shutdown_timeout_s=shutdown_timeout_s, on_deadline=on_deadline
    )


async def serve_app(
    server: _Uvicorn, sock: socket.socket, on_ready: Callable[[str], None]
) -> ShutdownReport:
    """Serve until a signal; ``on_ready(url)`` once accepting. Returns what shutdown did."""
    _install_signals(server)
    freeze_startup_heap()
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if server.started:
        on_ready(url_of(sock))
    await task
    return server.report


def freeze_startup_heap() -> None:
    """Exclude the objects alive after startup from every later garbage collection.

    They live as long as the process (modules, the model, the app), yet each full collection
    walks them all, on the event loop's thread: with torch and transformers loaded that is
    ~400,000 objects and 0.1-0.8 s during which no request is answered, and a burst of
    connections is enough to trigger one. Collect once, then freeze what survived (vLLM's API
    server does the same after its startup); later collections walk only what serving allocates.
    """
    gc.collect()
    gc.freeze()


def default_served_name(model: str | None) -> str:
    """The name clients call the model by: its path, as vLLM names a model by default.

    A local directory (the bundled model included) is named by its absolute path, a Hub id as
    given, so tools that load a tokenizer by the served name (``vllm bench serve``, aiperf,
    guidellm) find it with no extra flags, from any working directory on this machine. (The
    bundled model used to be served as ``tiny-llama``: one of those tools spent 2.5 minutes in
    Hub retries looking for it.)
    """
    from latlab.model_files import resolve_model_path

    return resolve_model_path(model)


def tokenizer_hint(served: str, model: str | None) -> str | None:
    """The exact flags other clients need when the served name does not lead to a tokenizer."""
    path = default_served_name(model)
    if served == path:
        return None
    return (f"latlab serve: the served name is not a path; tools that load a tokenizer by name "
            f"need it given: vllm bench serve --tokenizer {path}, aiperf --tokenizer {path}, "
            f"guidellm --processor {path}")  # fmt: skip


async def _serve_engine(
    engine_config: EngineConfig, sock: socket.socket, options: ServeOptions
) -> None:
    started = time.perf_counter()
    from latlab.engine.async_engine import AsyncLLM
    from latlab.serve.app import create_app

    engine = AsyncLLM(engine_config)
    prep: PrepProcess | None = None
    try:
        prep = start_prep_process(engine)
        served = options.served_model_name or default_served_name(engine_config.model)
        drain = Drain()
        guard = options.guard_for_context(int(engine.max_model_len))
        app = create_app(
            engine, served, guard=guard, drain=drain, buckets=options.histogram_buckets(),
            prep_process=prep,
        )  # fmt: skip
        server = uvicorn_server(
            app,
            guard=guard,
            drain=drain,
            log_level=options.log_level,
            shutdown_timeout_s=options.shutdown_timeout_s,
            on_deadline=engine.shutdown,
        )

        def ready(url: str) -> None:
            seconds = time.perf_counter() - started
            print(
                f"{READY_PREFIX}{url}/v1 (model '{served}', engine and server up in "
                f"{seconds:.1f} s; {capacity_text(engine)})",
                flush=True,
            )
            print(f"latlab serve: engine: {engine.summary()}", flush=True)
            if prep is not None and not prep.ready:
                print(PREP_STARTING, flush=True)
            hint = tokenizer_hint(served, engine_config.model)
            if hint:
                print(hint, file=sys.stderr, flush=True)

        report = await serve_app(server, sock, ready)
    finally:
        if prep is not None:
            prep.close()
        await engine.shutdown()
    print(report.line("latlab serve"), file=sys.stderr, flush=True)


PREP_STARTING = (
    "latlab serve: large requests are prepared on a thread until the preparation process "
    "is up (starting in the background)"
)


def start_prep_process(engine: Any) -> PrepProcess | None:
    """The process that prepares large requests, loading the engine's tokenizer files in the
    background (latlab.serve.prep); None when the engine does not say where they are."""
    model_dir = getattr(getattr(engine, "engine", None), "model_dir", None)
    if model_dir is None:
        return None
    prep = PrepProcess(str(model_dir), int(engine.max_model_len))
    try:
        return prep.start()
    except OSError as exc:  # cannot spawn (process or file limits): serve without it
        prep.close()
        print(f"latlab serve: no preparation process ({exc}); large requests are prepared on "
              "a thread", file=sys.stderr, flush=True)  # fmt: skip
        return None


def capacity_text(engine: Any) -> str:
    """The KV capacity the engine allocated, in the ready line (launchers read it there)."""
    blocks = int(engine.stats().num_kv_blocks)
    block_size = int(engine.config.block_size)
    return f"KV cache size: {blocks * block_size:,} tokens in {blocks:,} blocks of {block_size}"


def serve(engine_config: EngineConfig, options: ServeOptions | None = None) -> None:
    """Serve ``engine_config``'s model with ``options`` until SIGINT/SIGTERM (blocking)."""
    options = options or ServeOptions()
    sock = bind_socket(options.host, options.port)
    try:
        asyncio.run(_serve_engine(engine_config, sock, options))
    finally:
        sock.close()


@contextlib.contextmanager
def running_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, guard: GuardConfig | None = None
) -> Iterator[str]:
    """Serve ``app`` in a background thread for tests and benchmarks; yields the base URL."""
    sock = bind_socket(host, port)
    server = uvicorn_server(app, guard=guard or GuardConfig(), drain=Drain())
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="latlab-serve", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.005)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
