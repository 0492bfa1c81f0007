"""The watch's own /metrics: what the client saw, for Prometheus to scrape and alert on.

Histogram buckets are fine (eight per decade from 1 ms to 100 s) and always contain the SLO
thresholds as exact edges, so a rule on the probe's histogram measures the SLO itself, unlike
a server histogram whose edges were chosen by someone else.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from latlab.errors import ConfigError
from latlab.metrics import RequestRecord
from latlab.watch.server import ServerFigures
from latlab.watch.window import Verdict

_MANTISSAS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)


def fine_buckets(*thresholds_s: float | None, low: float = 1e-3, high: float = 100.0) -> tuple:
    """Eight edges per decade over [low, high], plus every threshold given, sorted."""
    edges = {
        round(m * 10**e, 12)
        for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for m in _MANTISSAS
    }
    edges = {e for e in edges if low <= e <= high}
    edges |= {t for t in thresholds_s if t}
    return tuple(sorted(edges))


# (attribute, name, help, extra label) of the probe's counters; labels target and model first.
_COUNTERS = (
    ("probes", "latlab_watch_probes", "Probes sent, by outcome (ok, error).", "outcome"),
    ("errors", "latlab_watch_probe_errors", "Failed probes by reason.", "reason"),
    ("cached", "latlab_watch_cached_prompt_tokens", "Probe prompt tokens the server reported as "
     "served from its prefix cache (should stay 0: every probe starts with a new tag).", None),
)  # fmt: skip
# (attribute, name, help, extra label) of the gauges; label target first.
_GAUGES = (
    ("target_up", "latlab_watch_target_up",
     "1 when the last cycle got an answer from the server, else 0.", None),
    ("slo_ok", "latlab_watch_slo_ok",
     "1 when the SLO holds over the window, 0 when breached, -1 before any probe.", None),
    ("attainment", "latlab_watch_slo_attainment",
     "Share of the window's probes that met every SLO threshold.", None),
    ("gap", "latlab_watch_server_gap_seconds",
     "Mean latency the probe measured minus the server's own mean over the window.", "metric"),
    ("server_up", "latlab_watch_server_metrics_up",
     "1 when the server's /metrics was read this cycle.", None),
)  # fmt: skip


class WatchMetrics:
    """latlab_watch_* series in their own registry (labels: target and model)."""

    probes: Counter
    errors: Counter
    cached: Counter
    target_up: Gauge
    slo_ok: Gauge
    attainment: Gauge
    gap: Gauge
    server_up: Gauge

    def __init__(
        self,
        target: str,
        *,
        slo_ttft_s: float | None = None,
        slo_tpot_s: float | None = None,
        slo_e2e_s: float | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._target = target
        labels = ["target", "model"]

        def hist(name: str, doc: str, *edges: float | None) -> Histogram:
            return Histogram(name, doc, labels, buckets=fine_buckets(*edges),
                             registry=self.registry)  # fmt: skip

        self.ttft = hist("latlab_watch_ttft_seconds", "Probe TTFT (client side).", slo_ttft_s)
        self.tpot = hist("latlab_watch_tpot_seconds", "Probe TPOT (client side).", slo_tpot_s)
        self.itl = hist("latlab_watch_itl_seconds", "Probe inter-token latency, per token.")
        self.e2e = hist("latlab_watch_e2e_seconds", "Probe end-to-end latency.", slo_e2e_s)
        for attr, name, doc, extra in _COUNTERS:
            names = [*labels, extra] if extra else labels
            setattr(self, attr, Counter(name, doc, names, registry=self.registry))
        for attr, name, doc, extra in _GAUGES:
            names = ["target", extra] if extra else ["target"]
            setattr(self, attr, Gauge(name, doc, names, registry=self.registry))
        self.slo_ok.labels(target).set(-1)
        self._server: Any = None

    def observe(self, records: list[RequestRecord], model: str | None) -> None:
        lv = (self._target, model or "")
        for rec in records:
            if not rec.ok:
                self.probes.labels(*lv, "error").inc()
                self.errors.labels(*lv, rec.error or "unknown").inc()
                continue
            self.probes.labels(*lv, "ok").inc()
            self.cached.labels(*lv).inc(rec.cached_tokens or 0)
            for hist, ns in (
                (self.ttft, rec.ttft_ns),
                (self.tpot, rec.tpot_ns),
                (self.e2e, rec.e2e_ns),
            ):
                if ns is not None:
                    hist.labels(*lv).observe(ns / 1e9)
            for gap_ns in rec.itl_ns():
                self.itl.labels(*lv).observe(gap_ns / 1e9)

    def publish(self, verdict: Verdict, server: ServerFigures, reachable: bool) -> None:
        t = self._target
        self.target_up.labels(t).set(1 if reachable else 0)
        if verdict.state != "no_data":
            self.slo_ok.labels(t).set(1 if verdict.state == "ok" else 0)
            self.attainment.labels(t).set(verdict.attainment or 0.0)
        self.server_up.labels(t).set(1 if server.available else 0)
        for metric in ("ttft", "tpot", "e2e"):
            client = verdict.client_ms.get(metric, {}).get("mean")
            theirs = server.ms.get(metric, {}).get("mean")
            if client is not None and theirs is not None:
                self.gap.labels(t, metric).set((client - theirs) / 1000.0)

    def serve(self, host: str, port: int) -> str:
        """Serve /metrics on host:port (0 = a free port) in a thread; returns the URL."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve the watch's metrics on {host}:{port} ({exc.strerror}); pick "
                "another --metrics-port, 0 for any free port, or --no-metrics"
            ) from None
        self._server = server
        return f"http://{host}:{server.server_port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
