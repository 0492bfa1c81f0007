"""Prometheus metrics of ``latlab gateway``, all named ``latlab:gateway_*``.

Per-upstream load and health are read from the upstreams at scrape time (never mirrored, so
they cannot drift). Each gateway gets its own registry, so tests can run several in one process.
Separate gateways (hosts, containers) are separate targets: sum them in PromQL.

Under ``--workers N`` (latlab.gateway.workers) prometheus_client runs in multiprocess mode and
any worker's ``/metrics`` answers for all: counters and histograms summed over the workers, the
cache's availability the lowest, and the per-upstream gauges (requests and tokens in flight
summed, health the lowest) copied from each worker's upstreams every ``SYNC_INTERVAL_S``, since
a scrape-time collector could only see the worker that answers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from latlab.gateway.saturation import LAG_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SYNC_INTERVAL_S = 1.0
_UPSTREAM_GAUGES = (
    ("latlab:gateway_upstream_outstanding_requests",
     "Requests in flight to each upstream, as the gateway sees them.", "outstanding", "livesum"),
    ("latlab:gateway_upstream_outstanding_tokens",
     "Prompt + max tokens of the requests in flight to each upstream.", "outstanding_tokens",
     "livesum"),
    ("latlab:gateway_upstream_healthy", "1 while an upstream is admitted, 0 ejected.", "healthy",
     "livemin"),
)  # fmt: skip


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, when it is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# vLLM's TTFT edges below 1 s plus finer steps near zero: a cache hit takes well under 1 ms.
_TTFT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
)  # fmt: skip


class _UpstreamCollector(Collector):
    def __init__(self, upstreams: Callable[[], list[Any]]) -> None:
        self._upstreams = upstreams

    def collect(self) -> Iterator[Any]:
        for name, doc, attr, _mode in _UPSTREAM_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["upstream"])
            for up in self._upstreams():
                family.add_metric([up.url], float(getattr(up, attr)))
            yield family


class GatewayMetrics:
    """Every counter, gauge and histogram of one gateway."""

    def __init__(self, upstreams: Callable[[], list[Any]]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "latlab:gateway_requests", "Requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.cache = Counter(
            "latlab:gateway_cache_requests",
            "Generation requests by cache outcome (hit, miss, coalesced, bypass).",
            ["result"], registry=r,
        )  # fmt: skip
        self.cache_errors = Counter(
            "latlab:gateway_cache_errors", "Cache store operations that failed.", registry=r
        )
        self.cache_available = Gauge(
            "latlab:gateway_cache_available",
            "1 while the cache store answers, 0 while the gateway serves uncached.", registry=r,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self.ttft = Histogram(
            "latlab:gateway_time_to_first_token_seconds",
            "The request's first byte at the gateway to its first content chunk sent, by cache "
            "outcome.",
            ["cache"], buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.request_wait = Histogram(
            "latlab:gateway_request_wait_seconds",
            "A generation request's first byte to its handler: the body's upload, then the "
            "wait for the event loop (milliseconds when one process is busy with other streams); "
            "on the direct lane, to the end of its checks.",
            buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_latency = Histogram(
            "latlab:gateway_upstream_latency_seconds",
            "Request sent upstream to the upstream's response headers.",
            ["upstream"], buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_requests = Counter(
            "latlab:gateway_upstream_requests",
            "Calls to each upstream, by outcome (ok, http_NNN, or the failure's reason).",
            ["upstream", "outcome"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "latlab:gateway_retries", "Requests retried on another upstream before any byte.",
            registry=r,
        )  # fmt: skip
        self._add_request_outcomes(r)
        self.cache_available.set(0)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._upstreams = upstreams
        self.shared_dir = multiprocess_dir()
        self._synced: list[tuple[Gauge, str]] = []
        self._sync_handle: asyncio.TimerHandle | None = None
        if self.shared_dir is None:
            r.register(_UpstreamCollector(upstreams))
        else:
            self._synced = [(Gauge(name, doc, ["upstream"], registry=r, multiprocess_mode=mode),
                             attr) for name, doc, attr, mode in _UPSTREAM_GAUGES]  # fmt: skip

    def _add_request_outcomes(self, r: CollectorRegistry) -> None:
        """Routing, refusals, trimming, the direct lane and the process's own load."""
        self.routes = Counter(
            "latlab:gateway_route_decisions",
            "Routing decisions: home (the prefix's upstream), spill (load bound), fallback "
            "(no prefix: least-load), or the policy's name.",
            ["policy", "choice"], registry=r,
        )  # fmt: skip
        self.auth_failures = Counter(
            "latlab:gateway_auth_failures", "Requests refused with 401.", registry=r
        )
        self.rate_limited = Counter(
            "latlab:gateway_rate_limited", "Requests refused with 429, by limit.",
            ["limit"], registry=r,
        )  # fmt: skip
        self.limit_store_errors = Counter(
            "latlab:gateway_limit_store_errors",
            "Rate-limit decisions taken in-process because Redis did not answer.", registry=r,
        )  # fmt: skip
        self.trimmed_tokens = Counter(
            "latlab:gateway_trimmed_tokens", "Prompt tokens removed by trimming.", registry=r
        )
        self.direct_lane = Counter(
            "latlab:gateway_direct_lane_requests",
            "Generation requests answered by the direct lane (latlab.gateway.lane); the others "
            "went the ASGI path (limits, trimming, cache reads, bodies still arriving).",
            registry=r,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "latlab:gateway_event_loop_lag_seconds",
            "How late a callback due every 0.25 s ran: the time the process was busy. Lags of "
            "tens of milliseconds mean one gateway process is CPU-bound.",
            buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: prometheus_client's ``labels()`` costs a few
        microseconds a call (a generator, a lock), six times per request on the gateway."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        self.sync_upstreams()
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.shared_dir)
        return generate_latest(merged)

    # ---- multiprocess mode -------------------------------------------------------------------

    def sync_upstreams(self) -> None:
        """Copy this worker's view of its upstreams into the shared gauges."""
        for gauge, attr in self._synced:
            for up in self._upstreams():
                gauge.labels(up.url).set(float(getattr(up, attr)))

    def start(self) -> None:
        """In multiprocess mode, sync the upstream gauges every SYNC_INTERVAL_S."""
        if not self._synced:
            return
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.sync_upstreams()
            self._sync_handle = loop.call_later(SYNC_INTERVAL_S, tick)

        tick()

    def stop(self) -> None:
        if self._sync_handle is not None:
            self._sync_handle.cancel()
            self._sync_handle = None
