"""Prometheus metrics for ``latlab serve``, named as vLLM names them with a ``latlab:`` prefix.

Latency histograms are observed by the server as requests finish. Gauges and counters that
the engine already keeps (running, waiting, KV usage, prefix cache, token totals) are read
from ``engine.stats()`` at scrape time instead of being mirrored: a mirrored counter drifts
the moment someone forgets to bump it, a read one cannot.

Each app gets its own registry, so several apps (tests, two servers in one process) never
collide on the global default registry.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from latlab.errors import ConfigError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket edges follow vLLM's so dashboards built for it read ours the same way; an SLO
# threshold between two edges cannot be measured exactly, hence HistogramBuckets below.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


@dataclass(kw_only=True, frozen=True, slots=True)
class HistogramBuckets:
    """Bucket edges (seconds) of the latency histograms: ``latlab serve --ttft-buckets`` etc.

    An alert on "TTFT over 300 ms" counts requests above a bucket edge, so the SLO threshold
    must be an edge; ``latlab alerts`` checks it and points here.
    """

    ttft: tuple[float, ...] = TTFT_BUCKETS
    itl: tuple[float, ...] = ITL_BUCKETS  # per-token ITL and per-request TPOT
    request: tuple[float, ...] = REQUEST_BUCKETS  # e2e and queue time


def parse_buckets(text: str, flag: str = "--ttft-buckets") -> tuple[float, ...]:
    """'0.05,0.1,0.25' -> (0.05, 0.1, 0.25); positive, finite, strictly increasing seconds."""
    try:
        edges = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r}: give bucket edges in seconds separated by commas, e.g. 0.1,0.25,0.5"
        ) from None
    if not edges:
        raise ConfigError(f"{flag}: give at least one bucket edge (seconds)")
    if any(not math.isfinite(e) or e <= 0 for e in edges):
        raise ConfigError(f"{flag} {text!r}: bucket edges must be positive, finite seconds")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ConfigError(f"{flag} {text!r}: bucket edges must be strictly increasing")
    return edges


# (metric name, help, EngineStats attribute)
_GAUGES = (
    ("latlab:num_requests_running", "Requests in the running batch.", "num_running"),
    ("latlab:num_requests_waiting", "Requests waiting to be scheduled.", "num_waiting"),
    ("latlab:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).", "kv_cache_usage"),
)
_COUNTERS = (
    ("latlab:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
     "prefix_cache_queries"),
    ("latlab:prefix_cache_hits", "Prompt tokens found in the prefix cache.", "prefix_cache_hits"),
    ("latlab:prompt_tokens", "Prompt tokens processed.", "prompt_tokens_total"),
    ("latlab:generation_tokens", "Tokens generated.", "generation_tokens_total"),
    ("latlab:num_preemptions", "Sequences preempted (blocks freed, recomputed later).",
     "num_preemptions"),
    ("latlab:spec_decode_num_draft_tokens", "Prompt-lookup draft tokens proposed.",
     "spec_draft_tokens_total"),
    ("latlab:spec_decode_num_accepted_tokens", "Draft tokens accepted (identical to greedy).",
     "spec_accepted_tokens_total"),
)  # fmt: skip


class _EngineStatsCollector(Collector):
    """Reads engine.stats() on every scrape."""

    def __init__(self, stats: Callable[[], Any], model_name: str) -> None:
        self._stats = stats
        self._model_name = model_name

    def collect(self) -> Iterator[Any]:
        stats = self._stats()
        for name, doc, attr in _GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model_name], float(getattr(stats, attr, 0) or 0))
            yield family
        for name, doc, attr in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model_name], float(getattr(stats, attr, 0) or 0))
            yield family


class ServeMetrics:
    """The latency histograms of one app plus the engine-backed gauges and counters."""

    def __init__(
        self,
        stats: Callable[[], Any],
        model_name: str,
        *,
        buckets: HistogramBuckets | None = None,
    ) -> None:
        edges = buckets or HistogramBuckets()
        self.registry = CollectorRegistry()
        labels = {"labelnames": ["model_name"], "registry": self.registry}

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, buckets=buckets, **labels).labels(model_name)

        self.ttft = histogram(
            "latlab:time_to_first_token_seconds",
            "HTTP request received to first token.",
            edges.ttft,
        )
        self.itl = histogram(
            "latlab:inter_token_latency_seconds", "Time between output tokens.", edges.itl
        )
        self.tpot = histogram(
            "latlab:request_time_per_output_token_seconds",
            "Per request: (finish - first token) / (output tokens - 1).",
            edges.itl,
        )
        self.e2e = histogram(
            "latlab:e2e_request_latency_seconds",
            "HTTP request received to finish.",
            edges.request,
        )
        self.queue = histogram(
            "latlab:request_queue_time_seconds",
            "Engine received the request to first scheduled (time in its waiting queue).",
            edges.request,
        )
        self.http = Counter(
            "latlab:http_requests",
            "HTTP responses by handler and status class (2xx, 4xx, 5xx).",
            labelnames=["handler", "status"],
            registry=self.registry,
        )
        self.success = Counter(
            "latlab:request_success",
            "Requests that finished, by finish reason (aborted requests are not counted).",
            labelnames=["model_name", "finished_reason"],
            registry=self.registry,
        )
        self._model_name = model_name
        self.registry.register(_EngineStatsCollector(stats, model_name))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def tracker(self, arrival_ns: int | None = None) -> RequestTracker:
        return RequestTracker(self, arrival_ns)


class RequestTracker:
    """Timestamps of one request as its outputs arrive; observes histograms at the end.

    TTFT and E2E run from ``arrival_ns``, when the HTTP request reached the app, to when the
    first (last) output reached the HTTP layer to be written, as vLLM's API server measures
    them: body reading, validation, tokenization, the wait for the engine's next step and the
    hand-over from the engine thread all count, as they do for a client. (Counting from the
    engine's pickup between steps to its own first-token stamp read 49-65 ms below every
    client's TTFT at 16 streams.) Queue time is the engine's own: from its receiving the
    request to the first step that scheduled it.
    """

    __slots__ = ("_first_ns", "_last_ns", "_metrics", "_start_ns", "_tokens")

    def __init__(self, metrics: ServeMetrics, arrival_ns: int | None = None) -> None:
        self._metrics = metrics
        self._start_ns = arrival_ns or time.perf_counter_ns()
        self._first_ns: int | None = None
        self._last_ns: int | None = None
        self._tokens = 0

    def on_output(self, output: Any) -> None:
        now = time.perf_counter_ns()
        new_tokens = len(getattr(output, "new_token_ids", None) or ())
        if new_tokens == 0:
            return
        self._tokens += new_tokens
        if self._last_ns is None:
            self._first_ns = now
        else:
            per_token = (now - self._last_ns) / new_tokens / 1e9
            for _ in range(new_tokens):
                self._metrics.itl.observe(per_token)
        self._last_ns = now

    def on_finished(self, output: Any) -> None:
        m = getattr(output, "metrics", None)
        arrival = self._start_ns
        queued = getattr(m, "arrival_ns", None) or arrival  # when the engine received it
        first_token = self._first_ns or getattr(m, "first_token_ns", None)
        finished = time.perf_counter_ns()
        scheduled = getattr(m, "first_scheduled_ns", None)
        if first_token:
            self._metrics.ttft.observe(max(first_token - arrival, 0) / 1e9)
        tokens = len(getattr(output, "token_ids", None) or ()) or self._tokens
        if first_token and tokens > 1:
            self._metrics.tpot.observe(max(finished - first_token, 0) / (tokens - 1) / 1e9)
        if scheduled:
            self._metrics.queue.observe(max(scheduled - queued, 0) / 1e9)
        self._metrics.e2e.observe(max(finished - arrival, 0) / 1e9)
        reason = getattr(output, "finish_reason", None) or "unknown"
        self._metrics.success.labels(self._metrics._model_name, reason).inc()


def count_http_status(app: Any, counter: Counter) -> Callable[..., Any]:
    """ASGI middleware: counts every HTTP response by path and status class (the 5xx alert).

    Only the paths of the app's own routes are used as labels (anything else is "other"), so
    a client probing random paths cannot grow the number of series.
    """
    known: set[str] = set()

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        if not known and scope.get("app") is not None:
            known.update(getattr(r, "path", "") for r in scope["app"].routes)
        path = scope.get("path", "")
        handler = path if path in known else "other"

        started = False

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
                counter.labels(handler, f"{int(message.get('status', 0)) // 100}xx").inc()
            await send(message)

        try:
            await app(scope, receive, counting_send)
        except Exception:
            if not started:  # the outermost error handler will answer 500
                counter.labels(handler, "5xx").inc()
            raise

    return middleware
