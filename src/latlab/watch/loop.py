"""The watch loop: probe, evaluate, read the server, publish, notify, show; then wait.

Waits are the interval, or an exponential backoff (doubling, capped at ``max_backoff_s``)
while nobody answers; an unreachable server is a breach, reported as such, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from latlab.metrics import RequestRecord
from latlab.watch.config import WatchConfig
from latlab.watch.exporter import WatchMetrics
from latlab.watch.notify import Notifier
from latlab.watch.probe import Prober, unreachable
from latlab.watch.server import ServerView, metrics_url
from latlab.watch.sink import JsonlSink, StoreSink
from latlab.watch.view import LineView, Snapshot
from latlab.watch.window import ProbeWindow, Verdict

# --once gives up on a server that did not answer this many cycles in a row (a breach).
ONCE_UNREACHABLE_CYCLES = 3


@dataclass(kw_only=True, slots=True)
class WatchResult:
    """How a watch ended: the last verdict and the exit code (--once: 0 held, 1 breached)."""

    verdict: Verdict
    cycles: int
    exit_code: int
    metrics_url: str | None = None
    notes: list[str] = field(default_factory=list)


class Watcher:
    """One watch; ``run()`` until --once's window is done, --duration passes, or stop()."""

    def __init__(
        self,
        config: WatchConfig,
        *,
        view: Any = None,
        backend: str | None = None,
        vllm_version: str | None = None,
        prober: Prober | None = None,
        recorder: StoreSink | None = None,
    ) -> None:
        self.config = config
        self.view = view or LineView()
        self.prober = prober or Prober(config)
        self.target = self.prober.target.base
        self.window = ProbeWindow(config.window_s, config.slo, config.percentile)
        self.server = ServerView(
            metrics_url(self.target, config.server_metrics), config.window_s, backend, vllm_version
        )
        slo = config.slo
        self.metrics = WatchMetrics(
            self.target,
            slo_ttft_s=_s(slo and slo.ttft_ms),
            slo_tpot_s=_s(slo and slo.tpot_ms),
            slo_e2e_s=_s(slo and slo.e2e_ms),
        )
        self.notifier = Notifier(config.on_breach, config.webhook, log=self.view.message)
        self.sink = JsonlSink(config.records_path) if config.records_path else None
        self.recorder = recorder
        self.metrics_url: str | None = None
        self._stop = asyncio.Event()
        self._state = "no_data"
        self._failures = 0
        self._server_note: str | None = None
        self._last_verdict = Verdict(state="no_data")

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> WatchResult:
        c = self.config
        if c.metrics_port is not None:
            self.metrics_url = self.metrics.serve(c.metrics_host, c.metrics_port)
            self.view.message(f"probe metrics at {self.metrics_url}")
        if self.server.warning:
            self.view.message(self.server.warning)
        start, cycle, verdict = time.monotonic(), 0, Verdict(state="no_data")
        try:
            while True:
                cycle += 1
                began = time.monotonic()
                verdict, wait_s = await self._cycle(cycle)
                if self._done(start, cycle) or self._stop.is_set():
                    break
                await self._sleep(began + wait_s - time.monotonic())
                if self._stop.is_set():
                    break
        finally:
            await self._close()
        code = 0 if not c.once or verdict.state == "ok" else 1
        return WatchResult(
            verdict=verdict, cycles=cycle, exit_code=code, metrics_url=self.metrics_url
        )

    async def _cycle(self, cycle: int) -> tuple[Verdict, float]:
        c = self.config
        records = await self.prober.cycle()
        reachable = not unreachable(records)
        stamp = time.time()  # the window ends at this cycle's probes, not after the server poll
        self._record(records, cycle, stamp)
        await asyncio.to_thread(self.server.poll)
        verdict, figures = self.window.evaluate(now=stamp), self.server.figures(c.percentile)
        self._keep(records, cycle, verdict)
        self.metrics.publish(verdict, figures, reachable)
        self._notify(verdict)
        self._failures = 0 if reachable else self._failures + 1
        wait_s = c.interval_s if reachable else self._backoff_s()
        self.view.update(
            Snapshot(
                target=self.target,
                model=self.prober.target.model,
                cycle=cycle,
                verdict=verdict,
                server=figures,
                percentile=c.percentile,
                window_s=c.window_s,
                next_in_s=wait_s,
                backing_off=not reachable,
                slo=_slo_ms(c),
                notes=self._notes(figures),
            )
        )
        return verdict, wait_s

    def _record(self, records: list[RequestRecord], cycle: int, stamp: float) -> None:
        cached = [r.cached_tokens for r in records if r.cached_tokens]
        if cached:
            self.view.message(f"a probe was served {max(cached)} prompt tokens from the server's "
                              "cache although its prompt started with a new tag: its TTFT is "
                              "optimistic (is a response cache in front?)")  # fmt: skip
        self.window.add(records, now=stamp)
        model = self.prober.target.model
        self.metrics.observe(records, model)
        if self.sink is not None:
            self.sink.write(records, cycle=cycle, target=self.target, model=model)

    def _keep(self, records: list[RequestRecord], cycle: int, verdict: Verdict) -> None:
        """Into the run store, with the verdict of the window they closed."""
        if self.recorder is None:
            return
        self._last_verdict = verdict
        self.recorder.add(records, cycle=cycle, verdict=verdict)
        if self.recorder.error:
            self.view.message(self.recorder.error)
            self.recorder.close(verdict)
            self.recorder = None

    def _backoff_s(self) -> float:
        c = self.config
        return min(c.interval_s * 2 ** (self._failures - 1), max(c.max_backoff_s, c.interval_s))

    def _notes(self, figures: Any) -> list[str]:
        note = None if figures.available else f"server view: {figures.note}"
        if note != self._server_note:
            self._server_note = note
            self.view.message(note or f"server view: reading {figures.names} metrics")
        return [note] if note else []

    def _notify(self, verdict: Verdict) -> None:
        previous, self._state = self._state, verdict.state
        if verdict.state == previous or verdict.state == "no_data":
            return
        event = {
            "target": self.target,
            "model": self.prober.target.model,
            "reasons": verdict.reasons,
            "verdict": verdict.to_dict(),
        }
        if verdict.state == "breach":
            self.notifier.transition("firing", event)
        elif previous == "breach":
            self.notifier.transition("resolved", event)

    def _done(self, start: float, cycle: int) -> bool:
        c = self.config
        elapsed = time.monotonic() - start
        if c.once:
            full = cycle * c.requests_per_cycle >= c.expected_probes or elapsed >= c.window_s
            gone = self._failures >= ONCE_UNREACHABLE_CYCLES
            return full or gone or self.window.certain_breach(c.expected_probes)
        return c.duration_s is not None and elapsed >= c.duration_s

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _close(self) -> None:
        await self.notifier.drain()
        await self.prober.aclose()
        self.metrics.close()
        if self.sink is not None:
            self.sink.close()
        if self.recorder is not None:
            self.recorder.close(self._last_verdict)
            if self.recorder.run_id is not None:
                self.view.message(
                    f"recorded run {self.recorder.run_id} in {self.recorder.store.path} "
                    f"(latlab runs show {self.recorder.run_id})"
                )


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


def _slo_ms(c: WatchConfig) -> dict[str, float | None]:
    return {"ttft": c.slo_ttft_ms, "tpot": c.slo_tpot_ms, "e2e": c.slo_e2e_ms}


async def _run(config: WatchConfig, view: Any, **kwargs: Any) -> WatchResult:
    watcher = Watcher(config, view=view, **kwargs)
    loop = asyncio.get_running_loop()
    installed = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, watcher.stop)
                installed.append(sig)
    try:
        return await watcher.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run_watch(config: WatchConfig, *, view: Any = None, **kwargs: Any) -> WatchResult:
    """Run a watch to its end (Ctrl-C or SIGTERM end it cleanly); see ``WatchResult``."""
    view = view or LineView()
    try:
        return asyncio.run(_run(config, view, **kwargs))
    finally:
        view.close()
