"""server.py: the listening socket, the ready line's URL, the test server's lifecycle."""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from latlab.errors import ConfigError
from latlab.serve.server import bind_socket, running_server, url_of


def test_accepted_sockets_say_tcp_so_asyncio_disables_nagle():
    # asyncio sets TCP_NODELAY only when sock.proto == IPPROTO_TCP; with proto 0 every small
    # SSE chunk waited for the client's delayed ACK (about 40 ms of TTFT).
    server = bind_socket("127.0.0.1", 0)
    server.listen()
    try:
        with socket.create_connection(server.getsockname()[:2]):
            accepted, _ = server.accept()
            with accepted:
                assert accepted.proto == socket.IPPROTO_TCP
    finally:
        server.close()


def test_taken_port_is_a_config_error():
    first = bind_socket("127.0.0.1", 0)
    first.listen()
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            bind_socket("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def test_url_of_names_the_bound_port():
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert url_of(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_running_server_serves_then_stops():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"ok": True}

    with running_server(app) as url:
        assert httpx.get(f"{url}/ping").json() == {"ok": True}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/ping", timeout=2)


_FREEZE_CHECK = """
import asyncio, gc
from starlette.applications import Starlette
from latlab.serve.guard import Drain, GuardConfig
from latlab.serve.server import bind_socket, serve_app, uvicorn_server

server = uvicorn_server(Starlette(), guard=GuardConfig(), drain=Drain())

def ready(url):
    print("frozen at ready:", gc.get_freeze_count() > 0, flush=True)
    server.should_exit = True

asyncio.run(serve_app(server, bind_socket("127.0.0.1", 0), ready))
"""


def test_serve_app_freezes_the_startup_heap_before_accepting():
    """A full garbage collection of torch/transformers' objects held the event loop 0.7 s; the
    objects alive at startup are frozen out of every later collection (in a child process:
    freezing pytest's own heap would keep its garbage alive)."""
    done = subprocess.run(
        [sys.executable, "-c", _FREEZE_CHECK], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "frozen at ready: True" in done.stdout


def test_a_preparation_process_that_cannot_spawn_leaves_the_thread_path(monkeypatch, capsys):
    from types import SimpleNamespace

    from latlab.serve import prep, server

    def refuse(self):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(prep.PrepProcess, "start", refuse)
    engine = SimpleNamespace(engine=SimpleNamespace(model_dir="/m"), max_model_len=64)
    assert server.start_prep_process(engine) is None
    assert "no preparation process" in capsys.readouterr().err
    assert server.start_prep_process(SimpleNamespace(max_model_len=64)) is None  # fakes


def test_a_stop_signal_delivered_twice_drains_and_a_later_second_one_forces():
    import asyncio
    import os
    import signal
    import time
    from types import SimpleNamespace

    from latlab.serve.server import REPEAT_WINDOW_S, _install_signals

    async def run() -> list[tuple[bool, bool]]:
        server = SimpleNamespace(should_exit=False, force_exit=False)
        loop = asyncio.get_running_loop()
        _install_signals(server)
        seen = []
        try:
            for pause_s in (0.0, 0.01, REPEAT_WINDOW_S + 0.1):  # two at once, then one later
                await asyncio.sleep(pause_s)
                started = time.monotonic()
                os.kill(os.getpid(), signal.SIGTERM)
                while time.monotonic() - started < 0.05:
                    await asyncio.sleep(0.005)
                seen.append((server.should_exit, server.force_exit))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return seen

    # systemd and a supervisor each sending SIGTERM is one request to drain; a second request
    # half a second later stops the waiting.
    assert asyncio.run(run()) == [(True, False), (True, False), (True, True)]
