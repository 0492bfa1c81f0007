"""Fixtures: the deterministic stub server upstream, a real Redis, and gateways in threads."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from latlab.gateway.config import GatewayConfig
from latlab.gateway.server import running_gateway
from latlab.procs import ManagedProcess, ProcessSpec, free_port
from latlab.testing.stub_server import StubServer


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    """TTFT 20 ms, chunks 5 ms apart: fast, and slow enough to overlap requests."""
    server = StubServer(ttft_s=0.02, itl_s=0.005)
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def gateway(**fields: Any) -> Iterator[tuple[str, Any]]:
    """A gateway in a background thread: (base URL without /v1, the Gateway)."""
    fields.setdefault("health_interval_s", 0.2)
    with running_gateway(GatewayConfig(**fields)) as (url, gw):
        yield url, gw


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port (installed by scripts/setup_services.sh)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is missing: run scripts/setup_services.sh (make test does)")
    port = free_port()
    work = tmp_path_factory.mktemp("redis")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(work)]  # fmt: skip
    proc = ManagedProcess(ProcessSpec(argv=argv, name="redis-server"))
    proc.start()
    try:
        proc.wait_ready(lambda: _redis_ping(port), timeout_s=20, what="answering PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()


def _redis_ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def flush_redis(redis_url: str) -> Iterator[str]:
    """The Redis URL, emptied before the test."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    yield redis_url
