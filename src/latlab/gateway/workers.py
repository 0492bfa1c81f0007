"""``latlab gateway --workers N``: N gateway processes on one port, and their supervisor.

One gateway process forwards every chunk on one core (60-80 us a chunk on the measured
machine: it saturates near 15,000 chunks a second, docs/gateway.md). With N workers each is a
whole gateway with its own event loop and its own listening socket on the same port
(``SO_REUSEPORT``): the kernel spreads connections over them by their addresses, without the
thundering herd of N processes waiting on one socket.

Shared by the workers: the response cache (the SQLite file is safe across processes; Redis),
rate limits (Redis only: with per-key limits and no Redis, ``--workers`` is refused, because
each process would count a key's requests alone), and metrics (prometheus_client's
multiprocess mode: every worker writes its series into files in a private directory, and any
worker's ``/metrics`` sums them). Per worker: coalescing (identical requests share one upstream
call only inside a worker), the loads least-load and prefix routing see, health checks, and
the connection cap.

The supervisor binds the port first without listening (a taken port fails at once, and the port
stays reserved while a worker restarts), forks the workers before it runs any event loop or
thread, prints one ready line when every worker serves, restarts a worker that dies (giving up
after ``MAX_DEATHS`` deaths in a minute), and on SIGINT/SIGTERM lets every worker drain its
streams, then stops what is left.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from latlab.errors import ConfigError
from latlab.gateway.config import GatewayConfig
from latlab.gateway.keys import KeyRing
from latlab.gateway.server import READY_PREFIX, describe
from latlab.serve.options import ServeOptions
from latlab.serve.server import bind_socket, url_of

MAX_DEATHS = 5  # worker deaths within DEATH_WINDOW_S that stop the supervisor
DEATH_WINDOW_S = 60.0
READY_TIMEOUT_S = 120.0
_PR_SET_PDEATHSIG = 1
_METRICS_PREFIX = "latlab-gateway-metrics-"


def check_workers(config: GatewayConfig, keys: KeyRing | None) -> None:
    """Refuse what several processes cannot do correctly; ConfigError says what to give."""
    if config.workers == 1 or config.limits_store or keys is None or not keys.limited:
        return
    raise ConfigError(
        f"--workers {config.workers} with per-key limits needs a shared limit store: each "
        "process would count a key's requests alone. Give --limits-redis redis://HOST:PORT/DB "
        "(or a redis:// --cache)"
    )


def enable_shared_metrics() -> Path:
    """Switch prometheus_client to multiprocess mode, in a fresh private directory.

    Must run before any metric is made (workers make theirs after the fork); the value class
    is re-chosen here because prometheus_client picked it from the environment at import. The
    directory is named after this process, so a later supervisor removes the one a killed
    supervisor could not.
    """
    from prometheus_client import values

    _remove_orphaned_metrics(Path(tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=f"{_METRICS_PREFIX}{os.getpid()}-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    values.ValueClass = values.get_value_class()
    return path


def _remove_orphaned_metrics(tmp: Path) -> None:
    """Metrics directories of supervisors that no longer run (killed with SIGKILL)."""
    for path in tmp.glob(f"{_METRICS_PREFIX}*-*"):
        pid = path.name[len(_METRICS_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


@dataclass(kw_only=True, slots=True)
class _Worker:
    index: int
    process: Any  # multiprocessing.Process
    reader: Connection  # the worker says "ready" on it once it serves


@dataclass(kw_only=True, slots=True)
class Supervisor:
    """Starts, watches and stops the workers; ``run`` blocks until a signal."""

    config: GatewayConfig
    options: ServeOptions
    count: int
    summary: str = ""  # the settings, for the ready line
    workers: dict[int, _Worker] = field(default_factory=dict)
    deaths: list[float] = field(default_factory=list)
    stopping: int = 0  # signals received
    _ctx: Any = field(default_factory=lambda: multiprocessing.get_context("fork"))

    def run(self, reservation: Any) -> int:
        """Serve on the port ``reservation`` (a bound socket) holds; the exit code (0 after a
        signal)."""
        self.options.port = reservation.getsockname()[1]
        for index in range(self.count):
            self._start(index)
        if not self._all_ready():
            self._stop_all()
            return 1
        print(f"{READY_PREFIX}{url_of(reservation)}/v1 ({self.summary}, {self.count} workers)",
              flush=True)  # fmt: skip
        code = self._watch()
        self._stop_all()
        return code

    def _start(self, index: int) -> None:
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main, args=(index, self.config, self.options, writer),
            name=f"latlab-gateway-worker-{index}", daemon=False,
        )  # fmt: skip
        process.start()
        writer.close()
        self.workers[index] = _Worker(index=index, process=process, reader=reader)

    def _all_ready(self) -> bool:
        waiting = dict(self.workers)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while waiting and not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                print("latlab gateway: workers did not start in time", file=sys.stderr)
                return False
            for index, worker in list(waiting.items()):
                if not _ready(worker, timeout_s=min(0.1, left)):
                    if not worker.process.is_alive():
                        print(f"latlab gateway: worker {index} failed to start",
                              file=sys.stderr)  # fmt: skip
                        return False
                    continue
                del waiting[index]
        return not waiting

    def _watch(self) -> int:
        """Until a signal: restart a worker that died; 1 when they keep dying."""
        while not self.stopping:
            sentinels = [w.process.sentinel for w in self.workers.values()]
            multiprocessing.connection.wait(sentinels, timeout=0.5)
            for worker in list(self.workers.values()):
                if worker.process.is_alive() or self.stopping:
                    continue
                if not self._replace(worker):
                    return 1
        return 0

    def _replace(self, worker: _Worker) -> bool:
        from prometheus_client import multiprocess

        code = worker.process.exitcode
        worker.reader.close()
        multiprocess.mark_process_dead(worker.process.pid)
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < DEATH_WINDOW_S] + [now]
        if len(self.deaths) >= MAX_DEATHS:
            print(f"latlab gateway: {len(self.deaths)} workers died within "
                  f"{DEATH_WINDOW_S:g} s; stopping", file=sys.stderr)  # fmt: skip
            return False
        print(f"latlab gateway: worker {worker.index} (pid {worker.process.pid}) exited with "
              f"{code}; starting another", file=sys.stderr, flush=True)  # fmt: skip
        self._start(worker.index)
        return True

    def signal(self, _signum: int) -> None:
        """Passed on to every worker as SIGTERM: the first drains, the second stops waiting.

        Workers ignore SIGINT, so a Ctrl-C (sent by the terminal to the whole process group)
        reaches them once, through here, and never counts twice.
        """
        self.stopping += 1
        for worker in self.workers.values():
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGTERM)

    def _stop_all(self) -> None:
        """Drain and stop every worker (already told when a signal started this), then kill
        what is still running after the shutdown timeout and a grace."""
        grace = self.options.shutdown_timeout_s + 5.0
        if not self.stopping:
            self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker in self.workers.values():
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)


def _ready(worker: _Worker, *, timeout_s: float) -> bool:
    if not worker.reader.poll(timeout_s):
        return False
    try:
        return worker.reader.recv() == "ready"
    except EOFError:
        return False


def _ready_without_sigint(ready: Connection) -> None:
    """In the worker's event loop once it serves: drop the SIGINT handler the server installed
    (the supervisor passes Ctrl-C on), then tell the supervisor."""
    import asyncio

    asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ready.send("ready")


def _die_with_parent() -> None:
    """SIGTERM this worker when the supervisor dies, even by SIGKILL (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return


def _worker_main(
    index: int, config: GatewayConfig, options: ServeOptions, ready: Connection
) -> None:
    """One worker: its own socket on the shared port, a whole gateway, until SIGTERM."""
    from latlab.gateway.server import serve_worker

    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until the event loop installs its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor passes Ctrl-C on as SIGTERM
    try:
        sock = bind_socket(options.host, options.port, reuse_port=True)  # the server listens
        serve_worker(config, options, sock, on_ready=lambda: _ready_without_sigint(ready),
                     name=f"latlab gateway worker {index}")  # fmt: skip
    except ConfigError as exc:
        print(f"latlab gateway: worker {index}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def serve_workers(config: GatewayConfig, options: ServeOptions) -> None:
    """Run ``latlab gateway --workers N`` until SIGINT/SIGTERM (blocking)."""
    from latlab.gateway.app import Gateway

    gateway = Gateway(config)  # every setting checked here, before any fork
    check_workers(config, gateway.keys)
    summary = describe(gateway)
    reservation = bind_socket(options.host, options.port, reuse_port=True)  # never listens
    metrics_dir = enable_shared_metrics()
    supervisor = Supervisor(config=config, options=options, count=config.workers, summary=summary)
    previous = {sig: signal.signal(sig, lambda s, _f: supervisor.signal(s))
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        code = supervisor.run(reservation)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reservation.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    print("latlab gateway: stopped", file=sys.stderr, flush=True)
    if code:
        raise SystemExit(code)
