"""Prometheus metrics of ``latlab gateway``, all named ``latlab:gateway_*``.

Per-upstream load and health are read from the upstreams at scrape time (never mirrored, so
they cannot drift). Counters and histograms are per process; with several gateway processes,
sum them in PromQL. Each gateway gets its own registry, so tests can run several in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from latlab.gateway.saturation import LAG_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# vLLM's TTFT edges below 1 s plus finer steps near zero: a cache hit takes well under 1 ms.
_TTFT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
)  # fmt: skip


class _UpstreamCollector(Collector):
    def __init__(self, upstreams: Callable[[], list[Any]]) -> None:
        self._upstreams = upstreams

    def collect(self) -> Iterator[Any]:
        families = (
            ("latlab:gateway_upstream_outstanding_requests",
             "Requests in flight to each upstream, as the gateway sees them.", "outstanding"),
            ("latlab:gateway_upstream_outstanding_tokens",
             "Prompt + max tokens of the requests in flight to each upstream.",
             "outstanding_tokens"),
            ("latlab:gateway_upstream_healthy", "1 while an upstream is admitted, 0 ejected.",
             "healthy"),
        )  # fmt: skip
        for name, doc, attr in families:
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
            "wait for the event loop (milliseconds when one process is busy with other streams).",
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
        r.register(_UpstreamCollector(upstreams))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _add_request_outcomes(self, r: CollectorRegistry) -> None:
        """Routing, refusals, trimming and the process's own load."""
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
        return generate_latest(self.registry)
