"""Processes latlab starts are latlab's to stop: a server in its own process group, stopped whole.

Everything latlab launches (``latlab serve``, ``vllm serve`` with its engine-core children, a
Redis or Prometheus for the tests, a headless browser) goes through :class:`ManagedProcess`:

- it starts in a new session, so the whole tree shares one process group id and a terminal's
  Ctrl-C reaches latlab, which then stops the group (the child never sees a half-delivered signal);
- its output goes to a log file, whose last lines every start-up error quotes;
- ``stop()`` sends SIGTERM to the group, waits, then SIGKILLs whatever is left, and checks that
  no process of the group survives (vLLM's ``EngineCore`` and ``Worker`` processes included);
- every live process is also stopped at interpreter exit and, inside :func:`sigterm_as_exit`,
  when latlab itself is sent SIGTERM (a ``timeout``, a CI cancel).

Standard library only: the bench client imports this without torch.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from latlab.errors import LatlabError

LOG_TAIL_LINES = 20
_LIVE: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()


class ProcessStartError(LatlabError):
    """A launched process exited or never became ready; the message carries its last log lines."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose process group is ``pgid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) > 2 and int(rest[2]) == pgid and rest[0] != "Z":
            members.append(int(entry.name))
    return members


def _listening_inodes(port: int) -> set[int] | None:
    """Socket inodes listening on TCP ``port`` (None where /proc/net is not available)."""
    found: set[int] = set()
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not any(t.exists() for t in tables):
        return None
    for table in tables:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local rem st ... inode
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                found.add(int(fields[9]))
    return found


def group_listens_on(pgid: int, port: int) -> bool:
    """True when a process of group ``pgid`` holds the socket listening on ``port``.

    A server that binds late (vLLM: a minute after launch) can find its free port taken by
    another program meanwhile; that program's /health must not count as this server's.
    Where /proc cannot tell (not Linux), this is True.
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return True
    for pid in group_members(pgid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                return True
    return False


def tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass(kw_only=True, slots=True)
class ProcessSpec:
    """What to start: the command, its environment additions, where its output goes."""

    argv: Sequence[str]
    name: str = ""  # for messages; defaults to the program name
    # Added to (and overriding) os.environ; a None value removes that variable.
    env: Mapping[str, str | None] = field(default_factory=dict)
    cwd: str | os.PathLike[str] | None = None
    log_path: str | os.PathLike[str] | None = None  # None: a file under the system temp dir
    pass_fds: Sequence[int] = ()  # file descriptors the child inherits (e.g. a control pipe)

    def label(self) -> str:
        return self.name or Path(str(self.argv[0])).name


class ManagedProcess:
    """One launched process group: start, wait until ready, stop everything it started."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.started_at: float | None = None  # time.perf_counter() at launch
        self._log_fh: object | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ManagedProcess:
        """Launch in a new session (own process group); raises ProcessStartError if it can't."""
        spec = self.spec
        self.log_path = Path(spec.log_path) if spec.log_path else _temp_log(spec.label())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {**os.environ, **{k: str(v) for k, v in spec.env.items() if v is not None}}
        for name in [k for k, v in spec.env.items() if v is None]:
            env.pop(name, None)
        try:
            self.proc = subprocess.Popen(
                list(map(str, spec.argv)), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, cwd=spec.cwd, start_new_session=True,
                pass_fds=tuple(spec.pass_fds),
            )  # fmt: skip
        except OSError as exc:
            log.close()
            raise ProcessStartError(
                f"cannot start {spec.label()} ({exc.strerror or exc}): command {spec.argv[0]!r}"
            ) from None
        self._log_fh = log
        self.started_at = time.perf_counter()
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)

    def fail(self, why: str) -> ProcessStartError:
        """An error that says what happened, quoting the process's last log lines."""
        last = self.log_tail()
        where = f" (log: {self.log_path})" if self.log_path else ""
        quoted = "\n".join("  | " + line for line in last.splitlines())
        return ProcessStartError(
            f"{self.spec.label()} {why}{where}" + (f"\n{quoted}" if quoted else "")
        )

    def wait_ready(
        self, check: Callable[[], bool], *, timeout_s: float, what: str = "ready"
    ) -> float:
        """Poll ``check`` until it is true; seconds since launch. Fails fast if the process dies."""
        deadline = time.perf_counter() + timeout_s
        while True:
            if not self.alive():
                code = None if self.proc is None else self.proc.returncode
                raise self.fail(f"exited with code {code} before it was {what}")
            if check():
                return time.perf_counter() - (self.started_at or time.perf_counter())
            if time.perf_counter() > deadline:
                raise self.fail(f"was not {what} after {timeout_s:g} s")
            time.sleep(0.05)

    def wait_http(self, url: str, *, timeout_s: float) -> float:
        """Wait until GET ``url`` answers 200 (e.g. ``/health``); seconds since launch."""
        return self.wait_ready(lambda: http_ok(url), timeout_s=timeout_s, what=f"healthy at {url}")

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the launched process itself to exit; its exit code, None on timeout.

        Children it left in its group (vLLM's ``EngineCore`` after ``os._exit``) keep running
        until ``stop()``, which a caller runs next in a ``finally``.
        """
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def pause(self) -> None:
        """SIGSTOP the whole group: it keeps its memory and uses no CPU until ``resume()``
        (a benchmark's anchor, loaded once, waits between rounds without competing)."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGCONT)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the whole group, SIGKILL what is left after ``grace_s``; the exit code.

        SIGCONT follows the SIGTERM: a paused (or Ctrl-Z'd) group acts on it at once instead
        of holding it until the SIGKILL.
        """
        if self.proc is None:
            return None
        pgid = self.proc.pid  # a session leader's pgid is its pid
        _signal_group(pgid, signal.SIGTERM)
        _signal_group(pgid, signal.SIGCONT)
        deadline = time.perf_counter() + grace_s
        while time.perf_counter() < deadline and (self.alive() or group_members(pgid)):
            time.sleep(0.05)
        if self.alive() or group_members(pgid):
            _signal_group(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            _wait_group_gone(pgid, 5.0)
        code = self.proc.poll()
        self._close_log()
        _LIVE.discard(self)
        return code

    def _close_log(self) -> None:
        fh, self._log_fh = self._log_fh, None
        if fh is not None:
            fh.close()  # type: ignore[attr-defined]

    def __enter__(self) -> ManagedProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_to_completion(spec: ProcessSpec, *, timeout_s: float) -> int:
    """Run a command until it exits, in its own process group; its exit code (-9 on timeout).

    Whatever it leaves in its group (vLLM's ``EngineCore`` after an offline run) is stopped
    when it exits, times out, or when latlab is interrupted, like a server's group is.
    """
    proc = ManagedProcess(spec).start()
    try:
        assert proc.proc is not None
        try:
            return proc.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return -9
    finally:
        proc.stop()


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """True when GET ``url`` answers 200 (no proxies: loopback servers only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while group_members(pgid) and time.perf_counter() < deadline:
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(0.05)


def _temp_log(label: str) -> Path:
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f"latlab-{label}-", suffix=".log")
    os.close(fd)
    return Path(name)


def stop_all() -> None:
    """Stop every process latlab started and has not stopped yet (interpreter exit, SIGTERM)."""
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(grace_s=5.0)


atexit.register(stop_all)


@contextlib.contextmanager
def sigterm_as_exit(code: int = 143) -> Iterator[None]:
    """Inside: SIGTERM raises SystemExit(code), so ``finally`` blocks and ``stop()`` run.

    Python's default SIGTERM action ends the process at once, leaving launched servers running
    and nothing written. Only the main thread can install handlers; elsewhere this is a no-op.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(code)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
