"""Which metric names a server exports, by backend and version.

vLLM renamed metrics several times, and every rename silently emptied dashboards built for the
old name (``gpu_cache_usage_perc`` -> ``kv_cache_usage_perc``, vLLM #18354/#27133;
``time_per_output_token_seconds`` -> ``inter_token_latency_seconds``, vLLM #24110/#32661).
Rules and dashboards therefore take their names from this table, never from literals.

Sources: vLLM's deprecation policy (deprecated in X.Y, hidden in X.Y+1, removed in X.Y+2), the
PRs above and #15458 (V0 gauges hidden in 0.9); the newest entry was checked against a live
scrape of ``vllm serve`` 0.32.0 (tests/monitor/fixtures/vllm-0.32.0.metrics.txt).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from latlab import __version__
from latlab.errors import ConfigError

BACKENDS = ("latlab", "vllm")
# Series a healthy server may not show yet: spec-decode counters only when speculative decoding
# is configured (vLLM), HTTP counters only after the first response.
OPTIONAL_ROLES = frozenset({"spec_draft_tokens", "spec_accepted_tokens", "http_requests"})


@dataclass(kw_only=True, frozen=True, slots=True)
class MetricNames:
    """Series names of one backend version. Histograms are base names (add _bucket/_count)."""

    backend: str
    since: str  # the first version these names describe
    ttft: str
    itl: str  # per-token (or, before vLLM 0.11, per-step) inter-token latency
    tpot: str | None  # per-request time per output token; None where the server has none
    e2e: str
    queue: str | None
    running: str
    waiting: str
    kv_usage: str
    prefix_queries: str | None  # counters, as exposed (with _total)
    prefix_hits: str | None
    preemptions: str
    prompt_tokens: str
    generation_tokens: str
    request_success: str
    spec_draft_tokens: str
    spec_accepted_tokens: str
    http_requests: str | None  # responses by handler and status class ("2xx", "5xx")
    model_label: str = "model_name"

    def histograms(self) -> dict[str, str]:
        roles = {
            "ttft": self.ttft,
            "itl": self.itl,
            "tpot": self.tpot,
            "e2e": self.e2e,
            "queue": self.queue,
        }
        return {role: name for role, name in roles.items() if name}

    def series(self, *, optional: bool = True) -> set[str]:
        """Every series name these names stand for, as a scrape shows them."""
        histograms = self.histograms()
        names = {f"{h}_count" for h in histograms.values()}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in {"backend", "since", "model_label"} or not isinstance(value, str):
                continue
            if f.name in histograms or (not optional and f.name in OPTIONAL_ROLES):
                continue
            names.add(value)
        return names

    def missing_from(self, present: set[str]) -> list[str]:
        """Names of these (optional ones aside) that a scrape with series ``present`` lacks."""
        return sorted(self.series(optional=False) - present)


LATLAB = MetricNames(
    backend="latlab",
    since=__version__,
    ttft="latlab:time_to_first_token_seconds",
    itl="latlab:inter_token_latency_seconds",
    tpot="latlab:request_time_per_output_token_seconds",
    e2e="latlab:e2e_request_latency_seconds",
    queue="latlab:request_queue_time_seconds",
    running="latlab:num_requests_running",
    waiting="latlab:num_requests_waiting",
    kv_usage="latlab:kv_cache_usage_perc",
    prefix_queries="latlab:prefix_cache_queries_total",
    prefix_hits="latlab:prefix_cache_hits_total",
    preemptions="latlab:num_preemptions_total",
    prompt_tokens="latlab:prompt_tokens_total",
    generation_tokens="latlab:generation_tokens_total",
    request_success="latlab:request_success_total",
    spec_draft_tokens="latlab:spec_decode_num_draft_tokens_total",
    spec_accepted_tokens="latlab:spec_decode_num_accepted_tokens_total",
    http_requests="latlab:http_requests_total",
)

# vLLM 0.6: the V0 engine. No prefix cache counters (only a hit-rate gauge, not used here).
_VLLM_0_6 = MetricNames(
    backend="vllm",
    since="0.6.0",
    ttft="vllm:time_to_first_token_seconds",
    itl="vllm:time_per_output_token_seconds",
    tpot=None,
    e2e="vllm:e2e_request_latency_seconds",
    queue="vllm:request_queue_time_seconds",
    running="vllm:num_requests_running",
    waiting="vllm:num_requests_waiting",
    kv_usage="vllm:gpu_cache_usage_perc",
    prefix_queries=None,
    prefix_hits=None,
    preemptions="vllm:num_preemptions_total",
    prompt_tokens="vllm:prompt_tokens_total",
    generation_tokens="vllm:generation_tokens_total",
    request_success="vllm:request_success_total",
    spec_draft_tokens="vllm:spec_decode_num_draft_tokens_total",
    spec_accepted_tokens="vllm:spec_decode_num_accepted_tokens_total",
    http_requests="http_requests_total",
)
# 0.8: V1 engine by default, prefix cache as counters (gpu_ prefixed).
_VLLM_0_8 = dataclasses.replace(
    _VLLM_0_6,
    since="0.8.0",
    prefix_queries="vllm:gpu_prefix_cache_queries_total",
    prefix_hits="vllm:gpu_prefix_cache_hits_total",
)
# 0.10: gpu_ prefixes dropped from device-neutral metrics (#18354; old names hidden in 0.11).
_VLLM_0_10 = dataclasses.replace(
    _VLLM_0_8,
    since="0.10.0",
    kv_usage="vllm:kv_cache_usage_perc",
    prefix_queries="vllm:prefix_cache_queries_total",
    prefix_hits="vllm:prefix_cache_hits_total",
)
# 0.11: TPOT renamed ITL (#24110), a per-request TPOT histogram added; old name gone in 0.13.
_VLLM_0_11 = dataclasses.replace(
    _VLLM_0_10,
    since="0.11.0",
    itl="vllm:inter_token_latency_seconds",
    tpot="vllm:request_time_per_output_token_seconds",
)
# 0.32.0: checked against a live scrape; the names above are unchanged.
_VLLM_0_32 = dataclasses.replace(_VLLM_0_11, since="0.32.0")

VLLM_VERSIONS: tuple[MetricNames, ...] = (_VLLM_0_6, _VLLM_0_8, _VLLM_0_10, _VLLM_0_11, _VLLM_0_32)
NEWEST_CHECKED_VLLM = _VLLM_0_32.since


@dataclass(kw_only=True, frozen=True, slots=True)
class GatewayNames:
    """Series of ``latlab gateway`` (latlab.gateway.metrics), for its dashboard row and alerts.

    Kept here as names, not imported from the gateway, so the monitor loads without the
    gateway's dependencies; tests/monitor/test_gateway_monitoring.py scrapes a real gateway to
    prove every name below is what it exports. Histograms are base names.
    """

    requests: str = "latlab:gateway_requests_total"  # by endpoint and exact status ("502")
    cache: str = "latlab:gateway_cache_requests_total"  # by result: hit, miss, coalesced, bypass
    cache_errors: str = "latlab:gateway_cache_errors_total"
    cache_available: str = "latlab:gateway_cache_available"
    ttft: str = "latlab:gateway_time_to_first_token_seconds"  # by cache outcome
    request_wait: str = "latlab:gateway_request_wait_seconds"
    upstream_latency: str = "latlab:gateway_upstream_latency_seconds"  # by upstream
    upstream_requests: str = "latlab:gateway_upstream_requests_total"  # by upstream, outcome
    retries: str = "latlab:gateway_retries_total"
    direct_lane: str = "latlab:gateway_direct_lane_requests_total"  # answered by the lane
    routes: str = "latlab:gateway_route_decisions_total"  # by policy, choice
    auth_failures: str = "latlab:gateway_auth_failures_total"
    rate_limited: str = "latlab:gateway_rate_limited_total"  # by limit
    limit_store_errors: str = "latlab:gateway_limit_store_errors_total"
    trimmed_tokens: str = "latlab:gateway_trimmed_tokens_total"
    loop_lag: str = "latlab:gateway_event_loop_lag_seconds"
    outstanding: str = "latlab:gateway_upstream_outstanding_requests"  # by upstream
    outstanding_tokens: str = "latlab:gateway_upstream_outstanding_tokens"
    healthy: str = "latlab:gateway_upstream_healthy"  # 1 admitted, 0 ejected

    def series(self, *, optional: bool = True) -> set[str]:
        """Every series these names stand for, as a scrape shows them (histograms as _count)."""
        names = set()
        for f in dataclasses.fields(self):
            if not optional and f.name in GATEWAY_OPTIONAL:
                continue
            value = getattr(self, f.name)
            names.add(f"{value}_count" if f.name in GATEWAY_HISTOGRAMS else value)
        return names

    def missing_from(self, present: set[str]) -> list[str]:
        return sorted(self.series(optional=False) - present)


GATEWAY_HISTOGRAMS = frozenset({"ttft", "request_wait", "upstream_latency", "loop_lag"})
# Labelled counters with no child until their first event (a 429).
GATEWAY_OPTIONAL = frozenset({"rate_limited"})
GATEWAY = GatewayNames()


@dataclass(kw_only=True, frozen=True, slots=True)
class Resolved:
    """The names chosen for a backend and version, and why, when it was a guess."""

    names: MetricNames
    warning: str | None = None


def parse_version(text: str) -> tuple[int, int, int]:
    """'0.11.2', 'v0.10.1rc1', '0.32.0+cpu' -> (0, 11, 2); ConfigError when it is not one."""
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        raise ConfigError(f"--vllm-version {text!r} is not a version; give one like 0.11.0")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def resolve(backend: str, version: str | None = None) -> Resolved:
    """Names for ``backend`` at ``version`` (None: the newest known), with a warning if guessed."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "latlab":
        return Resolved(names=LATLAB)
    if version is None or version == "latest":
        return Resolved(names=VLLM_VERSIONS[-1])
    wanted = parse_version(version)
    known = [(parse_version(n.since), n) for n in VLLM_VERSIONS]
    if wanted < known[0][0]:
        return Resolved(
            names=known[0][1],
            warning=f"vLLM {version} is older than the oldest version latlab knows "
            f"({known[0][1].since}); using that version's metric names",
        )
    names = [n for v, n in known if v <= wanted][-1]
    if wanted[:2] > known[-1][0][:2]:
        return Resolved(
            names=names,
            warning=f"vLLM {version} is newer than the newest version latlab has checked "
            f"({NEWEST_CHECKED_VLLM}); using its metric names. Check them against your server: "
            "latlab dashboard --backend vllm --check-metrics http://HOST:PORT/metrics",
        )
    return Resolved(names=names)


def match_scrape(present: set[str]) -> Resolved:
    """The names (of any backend and version) that best fit a scrape's series ``present``."""
    candidates = (LATLAB, *reversed(VLLM_VERSIONS))  # newest first wins ties
    best = min(candidates, key=lambda n: len(n.missing_from(present)))
    missing = best.missing_from(present)
    if len(missing) == len(best.series(optional=False)):
        return Resolved(names=best, warning="no latlab: or vllm: metrics in this scrape")
    if missing:
        return Resolved(
            names=best,
            warning=f"closest known names ({best.backend} {best.since}) lack {', '.join(missing)}",
        )
    return Resolved(names=best)
