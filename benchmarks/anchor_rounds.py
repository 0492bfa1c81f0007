"""An anchor loaded once and timed in rounds between the measured system's own rounds.

On a shared machine the speed of the cores and of memory drifts by 20-40% within minutes; an
anchor timed after the system it anchors (vLLM's run took ~5 minutes after latlab's) compares
two different machines. Here the anchor (``benchmarks/anchors/vllm_offline.py --rounds-fds``)
loads and warms up once, then waits paused (SIGSTOP on its whole process group: its memory
stays, it takes no CPU from the system being timed) and runs one timed round whenever asked::

    with AnchorRounds(argv, name="vllm bind=all") as anchor:
        anchor.start(load_timeout_s=900)      # -> its load figures
        for _ in range(3):
            time_latlab()                     # while the anchor sleeps
            anchor.round(64)                  # -> {"batch": 64, "tok_per_s": ...}

The rounds of both systems then fall in the same minutes: A B A B, not A A A B B B. The pipe
protocol is a line each way; a dead or silent anchor raises ``AnchorError`` quoting its log,
and ``close()`` (or leaving the ``with``) stops its whole group, paused or not.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from latlab.procs import ManagedProcess, ProcessSpec


class AnchorError(RuntimeError):
    """The anchor died, went silent past its timeout, or answered something else."""


class AnchorRounds:
    """One anchor process group driven over two pipes; see the module docstring."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        round_timeout_s: float = 600.0,
    ) -> None:
        self.argv, self.name, self.round_timeout_s = list(argv), name, round_timeout_s
        self.env, self.log_path = dict(env or {}), log_path
        self.proc: ManagedProcess | None = None
        self._to_anchor: int | None = None
        self._from_anchor: int | None = None
        self.ready: dict = {}  # its ready line: load figures
        self._buffer = b""
        self._answering = False  # set once it said ready; cleared when it fails

    def start(self, *, load_timeout_s: float) -> dict:
        """Launch, wait for its ``ready`` line (its load figures), and pause it."""
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        argv = [*self.argv, "--rounds-fds", f"{req_r},{res_w}"]
        spec = ProcessSpec(argv=argv, name=self.name, env=self.env, log_path=self.log_path,
                           pass_fds=(req_r, res_w))  # fmt: skip
        try:
            self.proc = ManagedProcess(spec).start()
        finally:
            os.close(req_r)  # the child's ends: its exit must read as end of file here
            os.close(res_w)
        self._to_anchor, self._from_anchor = req_w, res_r
        ready = self._answer(load_timeout_s, "ready")
        if not ready.get("ready"):
            raise self._fail(f"answered {ready!r} instead of ready")
        self.proc.pause()
        self._answering = True
        self.ready = ready
        return ready

    def round(self, batch: int) -> dict:
        """One timed round at ``batch`` requests: resume, ask, read the answer, pause again."""
        assert self.proc is not None and self._to_anchor is not None, "start() first"
        self.proc.resume()
        try:
            os.write(self._to_anchor, f"{batch}\n".encode())
        except BrokenPipeError:
            raise self._fail("closed its end of the pipe") from None
        got = self._answer(self.round_timeout_s, f"a round at batch {batch}")
        self.proc.pause()
        if got.get("batch") != batch or "tok_per_s" not in got:
            raise self._fail(f"answered {got!r} to a round at batch {batch}")
        return got

    def close(self, quit_timeout_s: float = 30.0) -> None:
        """Ask it to quit and give it ``quit_timeout_s`` to (when it still answers), then stop
        its whole group (paused or not, with whatever it left running); idempotent."""
        polite = self.proc is not None and self._to_anchor is not None and self._answering
        if polite:
            self.proc.resume()
            try:
                os.write(self._to_anchor, b"quit\n")
            except OSError:
                polite = False  # it is gone already
        for fd in (self._to_anchor, self._from_anchor):
            if fd is not None:
                os.close(fd)
        self._to_anchor = self._from_anchor = None
        if self.proc is not None:
            if polite:
                self.proc.wait(quit_timeout_s)
            self.proc.stop(grace_s=10.0)

    def __enter__(self) -> AnchorRounds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _answer(self, timeout_s: float, what: str) -> dict:
        """The next JSON line from the anchor, or AnchorError if it dies or stays silent."""
        deadline = time.perf_counter() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise self._fail(f"sent no {what} within {timeout_s:g} s")
            readable, _, _ = select.select([self._from_anchor], [], [], min(left, 1.0))
            if not readable:
                continue
            chunk = os.read(self._from_anchor, 1 << 16)
            if not chunk:
                raise self._fail(f"ended before it sent {what}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise self._fail(f"sent {line[:200]!r}, not JSON, for {what}") from None

    def _fail(self, why: str) -> AnchorError:
        assert self.proc is not None
        self._answering = False
        return AnchorError(str(self.proc.fail(why)))
