"""Is the gateway keeping up? Its event loop's lag, measured, exported and said once.

One gateway process forwards every chunk on one core: at about 50 us a chunk it saturates near
20,000 chunks a second (256 streams of 100 tokens a second on the measured machine,
docs/gateway.md), and past that chunks leave in bunches and TTFT grows while nothing fails. The
symptom an operator can see is the loop running late: a callback asked for every
``interval_s`` fires late by however long the loop was busy. The lag goes into
``latlab:gateway_event_loop_lag_seconds``; a lag over ``warn_s`` is logged (at most once a
minute) with what to do about it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("latlab.gateway")
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLagMonitor:
    """Schedules itself every ``interval_s`` with ``call_later`` (no task) and records lag."""

    def __init__(
        self,
        histogram: Any,
        *,
        interval_s: float = 0.25,
        warn_s: float = 0.05,
        warn_every_s: float = 60.0,
    ) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        self.warn_s = warn_s
        self.warn_every_s = warn_every_s
        self.warnings = 0
        self._last_warning = -float("inf")
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self.stop()  # a second start (an app's lifespan and its server both) keeps one timer
        self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self.interval_s
        self._handle = loop.call_at(self._due, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        lag = max(0.0, loop.time() - self._due)
        self.histogram.observe(lag)
        if lag > self.warn_s:
            self._warn(lag)
        self._schedule(loop)

    def _warn(self, lag: float) -> None:
        now = time.monotonic()
        if now - self._last_warning < self.warn_every_s:
            return
        self._last_warning = now
        self.warnings += 1
        log.warning(
            "the event loop ran %.0f ms late: this gateway process is CPU-bound (chunks leave "
            "in bunches, TTFT grows); give it a core of its own or split the streams over "
            "more gateways (latlab:gateway_event_loop_lag_seconds)", lag * 1e3,
        )  # fmt: skip
