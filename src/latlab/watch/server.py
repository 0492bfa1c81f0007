"""The server's own view of the same time: its /metrics, read once per cycle.

The difference between the TTFT the probe measures and the TTFT the server reports is what the
server cannot see: network, TLS, proxies and gateways, queueing in front of it. Histograms are
summed over the window from per-cycle deltas, so a server restart (counters back to zero) in
the middle of a window costs one cycle, not the window. Server figures cover all its traffic,
not only the probe's; the view says how many requests that was.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from latlab.errors import TargetError
from latlab.monitor.names import MetricNames, match_scrape, resolve
from latlab.monitor.scrape import Histogram, Scrape, fetch

ROLES = ("ttft", "tpot", "e2e")


@dataclass(kw_only=True, slots=True)
class ServerFigures:
    """The server's figures over the window (ms), or why there are none."""

    available: bool
    note: str | None = None
    names: str | None = None  # e.g. 'vllm 0.11.0'
    requests: float = 0.0  # requests the server finished in the window (all traffic)
    ms: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "available": self.available,
            "note": self.note,
            "names": self.names,
            "requests": self.requests,
            "ms": self.ms,
        }


def metrics_url(server_base: str, mode: str) -> str | None:
    """Where the server's metrics are: '<base without /v1>/metrics', a URL given, or None."""
    if mode == "off":
        return None
    if mode != "auto":
        return mode
    root = server_base.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/metrics"


class ServerView:
    """Per-cycle scrapes of the server's histograms, summed over the watch window."""

    def __init__(
        self,
        url: str | None,
        window_s: float,
        backend: str | None = None,
        vllm_version: str | None = None,
    ) -> None:
        self.url = url
        self.window_s = window_s
        self._names: MetricNames | None = None
        self._warning: str | None = None
        if backend is not None:
            resolved = resolve(backend, vllm_version)
            self._names, self._warning = resolved.names, resolved.warning
        self._last: dict[str, Histogram] = {}
        self._deltas: deque[tuple[float, dict[str, Histogram]]] = deque()
        self.note: str | None = None if url else "server metrics off (--server-metrics off)"

    @property
    def warning(self) -> str | None:
        return self._warning

    def poll(self, now: float | None = None) -> None:
        """One scrape; on failure the view goes client-only and says why (never raises)."""
        stamp = time.time() if now is None else now
        if self.url is None:
            return
        try:
            scrape = fetch(self.url)
        except TargetError as exc:
            self.note = f"client-side only: {exc}"
            return
        names = self._names_for(scrape)
        if names is None:
            return
        self.note = None
        current = {role: h for role in ROLES if (h := _histogram(scrape, names, role))}
        delta = {
            role: h.minus(self._last.get(role)) for role, h in current.items() if role in self._last
        }
        self._last = current
        self._deltas.append((stamp, delta))
        while self._deltas and self._deltas[0][0] < stamp - self.window_s:
            self._deltas.popleft()

    def _names_for(self, scrape: Scrape) -> MetricNames | None:
        if self._names is not None:
            return self._names
        resolved = match_scrape(scrape.names())
        if resolved.warning and "no latlab: or vllm:" in resolved.warning:
            self.note = f"client-side only: {self.url} has {resolved.warning}"
            return None
        self._names, self._warning = resolved.names, resolved.warning
        return self._names

    def figures(self, pct: float) -> ServerFigures:
        if self.note or self._names is None:
            return ServerFigures(available=False, note=self.note or "no scrape yet")
        summed: dict[str, Histogram] = {}
        for _, delta in self._deltas:
            for role, h in delta.items():
                summed[role] = _add(summed.get(role), h)
        ms = {role: _stats_ms(h, pct) for role, h in summed.items()}
        ttft = summed.get("ttft")
        label = f"{self._names.backend} {self._names.since}"
        return ServerFigures(
            available=True, names=label, ms=ms, requests=ttft.total if ttft else 0.0
        )


def _histogram(scrape: Scrape, names: MetricNames, role: str) -> Histogram | None:
    base = {"ttft": names.ttft, "tpot": names.tpot, "e2e": names.e2e}[role]
    return scrape.histogram(base) if base else None


def _add(a: Histogram | None, b: Histogram) -> Histogram:
    if a is None or a.edges != b.edges:
        return b
    counts = tuple(x + y for x, y in zip(a.counts, b.counts, strict=True))
    return Histogram(edges=a.edges, counts=counts, total=a.total + b.total, sum=a.sum + b.sum)


def _stats_ms(h: Histogram, pct: float) -> dict[str, float | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1000.0

    return {
        "p50": ms(h.quantile(0.5)),
        f"p{pct:g}": ms(h.quantile(pct / 100.0)),
        "mean": ms(h.mean()),
    }
