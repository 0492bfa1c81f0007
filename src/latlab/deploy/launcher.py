"""``launch(backend, settings)``: start a server, wait until it answers, time its cold start.

The steps are the contract's (see :mod:`latlab.deploy.contract`); this module is the one place
they are written, so ``latlab serve`` and ``vllm serve`` are launched, timed and stopped alike.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

from latlab.deploy.contract import (
    Backend,
    ColdStart,
    DeployError,
    Deployment,
    LaunchSettings,
    LogFacts,
)
from latlab.procs import (
    ManagedProcess,
    ProcessSpec,
    ProcessStartError,
    free_port,
    group_listens_on,
    http_ok,
    tail,
)

# A server that loses a race for its port (another process took it between our check and its
# bind) is relaunched on a fresh port this many times.
PORT_ATTEMPTS = 3
FIRST_TOKEN_PROMPT = "Hello"
_REASON_CHARS = 600


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` right now (we can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(settings: LaunchSettings, notes: list[str]) -> int:
    """The requested port when it is free, else a free one (and a note saying so)."""
    if settings.port is None or settings.port == 0:
        return free_port(settings.host)
    if port_is_free(settings.host, settings.port):
        return settings.port
    port = free_port(settings.host)
    notes.append(f"port {settings.port} was in use; launched on port {port} instead")
    return port


def launch(
    backend: Backend,
    settings: LaunchSettings,
    *,
    progress: Callable[[str], None] | None = None,
) -> Deployment:
    """Start ``backend`` serving ``settings.model``; a healthy Deployment, or DeployError.

    On any failure (including Ctrl-C while waiting) the process group is stopped before the
    error propagates, so nothing is left running.
    """
    say = progress or (lambda _: None)
    problems = backend.preflight(settings)
    if problems:
        raise DeployError(f"{backend.name} pre-flight check failed: " + "; ".join(problems))
    notes: list[str] = []
    port = choose_port(settings, notes)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        process, argv, env = _start(backend, settings, port)
        say(f"{backend.name}: launched on port {port}, waiting for /health")
        try:
            healthy_s = _wait_healthy(backend, settings, process, port)
        except _PortTaken:
            process.stop()
            if attempt == PORT_ATTEMPTS:
                raise DeployError(
                    f"{backend.name} could not bind a port after {PORT_ATTEMPTS} tries "
                    f"(last {port}; log: {process.log_path})"
                ) from None
            notes.append(f"port {port} was taken at bind time; relaunched on another")
            port = free_port(settings.host)
            continue
        except BaseException:
            process.stop()
            raise
        break
    deployment = Deployment(
        backend=backend.name, model=settings.name, host=settings.host, port=port,
        argv=argv, engine_args=dict(settings.engine_args), env=env,
        log_path=process.log_path, cold_start=ColdStart(healthy_s=healthy_s), facts=LogFacts(),
        process=process, notes=notes,
    )  # fmt: skip
    try:
        say(f"{backend.name}: healthy after {healthy_s:.1f} s, sending the first request")
        deployment.cold_start.first_token_s = _first_token_s(deployment, settings)
        deployment.facts = backend.parse_log(_log_text(process.log_path))
    except BaseException:
        deployment.stop()
        raise
    return deployment


def _start(
    backend: Backend, settings: LaunchSettings, port: int
) -> tuple[ManagedProcess, list[str], dict[str, str | None]]:
    command = backend.command(settings, port)
    env = {**backend.env_settings(settings), **command.env}
    log_path = None
    if settings.log_dir is not None:
        log_path = Path(settings.log_dir) / f"{backend.name}-{port}.log"
    spec = ProcessSpec(argv=command.argv, name=backend.name, env=env, log_path=log_path)
    try:
        process = ManagedProcess(spec).start()
    except ProcessStartError as exc:
        raise DeployError(str(exc)) from None
    return process, list(command.argv), env


class _PortTaken(Exception):
    """The server exited because its port was taken (a race); relaunch on another."""


def _wait_healthy(
    backend: Backend, settings: LaunchSettings, process: ManagedProcess, port: int
) -> float:
    url = f"http://{settings.host}:{port}/health"
    pgid = process.pid or 0

    def ours_and_healthy() -> bool:  # another program may have taken the port meanwhile
        return http_ok(url) and group_listens_on(pgid, port)

    try:
        return process.wait_ready(ours_and_healthy, timeout_s=settings.health_timeout_s,
                                  what=f"healthy at {url}")  # fmt: skip
    except ProcessStartError as exc:
        if process.alive():  # not healthy in time: the log's last lines say where it hung
            raise DeployError(str(exc)) from None
        text = _log_text(process.log_path)
        if backend.port_taken(text):
            raise _PortTaken from None
        reason = backend.parse_log(text).error
        if reason is None:  # no reason of its own: quote the log
            raise DeployError(str(exc)) from None
        code = process.proc.returncode if process.proc is not None else None
        raise DeployError(
            f"{backend.name} failed to start: {reason[:_REASON_CHARS]} "
            f"(exit code {code}; log: {process.log_path})"
        ) from None


def _log_text(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(encoding="utf-8", errors="replace")


def _first_token_s(deployment: Deployment, settings: LaunchSettings) -> float:
    """Stream one short completion; seconds from launch to its first token-carrying chunk."""
    import httpx

    body = {"model": deployment.model, "prompt": FIRST_TOKEN_PROMPT, "max_tokens": 4,
            "temperature": 0.0, "stream": True}  # fmt: skip
    started = deployment.process.started_at or time.perf_counter()
    timeout = httpx.Timeout(settings.first_token_timeout_s, connect=10.0)
    try:
        with (
            httpx.Client(timeout=timeout, trust_env=False) as client,
            client.stream("POST", deployment.url + "/completions", json=body) as resp,
        ):
            if resp.status_code != 200:
                detail = resp.read().decode("utf-8", "replace")[:300]
                raise DeployError(
                    f"{deployment.backend} is healthy but refused its first request "
                    f"(HTTP {resp.status_code}): {detail}"
                )
            for line in resp.iter_lines():
                if _carries_token(line):
                    return time.perf_counter() - started
    except httpx.HTTPError as exc:
        raise DeployError(
            f"{deployment.backend} is healthy but its first request failed "
            f"({type(exc).__name__}: {exc}); log: {deployment.log_path}\n"
            + tail(deployment.log_path)
        ) from None
    raise DeployError(f"{deployment.backend} answered its first request without any token")


def _carries_token(line: str) -> bool:
    """An SSE line with a choice: a token arrived (empty text still counts, as in bench)."""
    if not line.startswith("data: {"):
        return False
    with contextlib.suppress(ValueError):
        return bool(json.loads(line[6:]).get("choices"))
    return False


def wait_gone(deployment: Deployment, timeout_s: float = 10.0) -> bool:
    """True once the server's port no longer answers (after stop(); used by tests)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if not http_ok(deployment.base_url + "/health", timeout_s=0.5):
            return True
        time.sleep(0.05)
    return False
