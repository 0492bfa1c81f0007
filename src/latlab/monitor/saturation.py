"""Saturation alerts: the causes that show before (or beside) an SLO burn.

Each fires after its condition held for the saturation window (``for``), so one slow scrape
or one burst does not page anyone.
"""

from __future__ import annotations

from typing import Any

from latlab.monitor.durations import format_duration
from latlab.monitor.names import GATEWAY
from latlab.monitor.promql import job_matcher, selector
from latlab.monitor.spec import RuleSpec


def _alert(name: str, expr: str, window: str, severity: str, summary: str, why: str) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": window,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": why},
    }


def saturation_rules(spec: RuleSpec, notes: list[str]) -> list[dict[str, Any]]:
    w = format_duration(spec.saturation_window_s)
    return _engine_rules(spec, w) + _http_rules(spec, w, notes) + _probe_rules(spec, w)


def _engine_rules(spec: RuleSpec, w: str) -> list[dict[str, Any]]:
    n, sel = spec.names, selector(job_matcher(spec.job), spec.matchers)
    return [
        _alert("LatlabQueueGrowing",
               f"min_over_time({n.waiting}{sel}[{w}]) > 0 and deriv({n.waiting}{sel}[{w}]) > 0",
               w, "ticket", f"{spec.service}: the waiting queue has grown for {w}",
               "Requests wait longer and longer before they start: TTFT grows with the queue. "
               "Add capacity or shed load."),
        _alert("LatlabKVCacheNearlyFull",
               f"avg_over_time({n.kv_usage}{sel}[{w}]) > {spec.kv_usage_threshold:g}",
               w, "ticket", f"{spec.service}: KV cache over {spec.kv_usage_threshold:.0%} full",
               "Near a full KV cache new sequences wait and running ones get preempted."),
        _alert("LatlabPreempting", f"rate({n.preemptions}{sel}[{w}]) > 0", w, "ticket",
               f"{spec.service}: sequences are being preempted",
               "Preempted sequences are recomputed later: their latency jumps. The KV cache is "
               "too small for the load."),
    ]  # fmt: skip


def _http_rules(spec: RuleSpec, w: str, notes: list[str]) -> list[dict[str, Any]]:
    n, rules = spec.names, []
    if n.http_requests:
        sel = selector(job_matcher(spec.job), spec.matchers)
        bad = selector(job_matcher(spec.job), spec.matchers, 'status="5xx"')
        by, http = "sum by (job, instance)", n.http_requests
        ratio = f"{by} (rate({http}{bad}[{w}])) / {by} (rate({http}{sel}[{w}]))"
        rules.append(_alert(
            "LatlabServerErrors", f"{ratio} > {spec.error_rate_threshold:g}", w, "page",
            f"{spec.service}: over {spec.error_rate_threshold:.0%} of responses are 5xx",
            "The server fails requests (overload answers 503, internal errors 500)."))  # fmt: skip
    else:
        notes.append(f"no 5xx alert: {n.backend} {n.since} exports no HTTP status counter")
    if spec.job:
        rules.append(_alert(
            "LatlabServerDown", f"up{selector(job_matcher(spec.job))} == 0", w, "page",
            f"{spec.service}: Prometheus cannot scrape the server",
            "Its /metrics did not answer: the server is down or unreachable."))  # fmt: skip
    return rules


def _probe_rules(spec: RuleSpec, w: str) -> list[dict[str, Any]]:
    if not spec.watch_job:
        return []
    sel = selector(job_matcher(spec.watch_job))
    return [
        _alert(
            "LatlabProbeFailing",
            f"latlab_watch_target_up{sel} == 0",
            w,
            "page",
            f"{spec.service}: latlab watch cannot get answers from the server",
            "The synthetic probe's requests fail (connection refused, timeouts, errors): "
            "users most likely see the same.",
        ),
        _alert(
            "LatlabProbeSLOBreach",
            f"latlab_watch_slo_ok{sel} == 0",
            w,
            "ticket",
            f"{spec.service}: latlab watch sees the SLO breached on the client side",
            "What a client measures (TTFT, TPOT incl. network, proxies and queueing in "
            "front of the server) is over the SLO in the watch's window.",
        ),
        _alert(
            "LatlabProbeDown",
            f"up{sel} == 0",
            w,
            "ticket",
            f"{spec.service}: the latlab watch probe is not running",
            "Nothing checks what users see while the probe is down.",
        ),
    ]


def gateway_rules(spec: RuleSpec) -> list[dict[str, Any]]:
    """Alerts on ``latlab gateway`` (job ``spec.gateway_job``): down, no upstream left, an
    upstream ejected, 5xx answers, a CPU-bound process, the cache or the limit store failing."""
    if not spec.gateway_job:
        return []
    g, w = GATEWAY, format_duration(spec.saturation_window_s)
    sel = selector(job_matcher(spec.gateway_job))
    fivexx = selector(job_matcher(spec.gateway_job), 'status=~"5.."')
    by = "sum by (job, instance)"
    errors = f"{by} (rate({g.requests}{fivexx}[{w}])) / {by} (rate({g.requests}{sel}[{w}]))"
    lag_rate = f"rate({g.loop_lag}_bucket{sel}[{w}])"
    lag = f"histogram_quantile(0.99, sum by (job, instance, le) ({lag_rate}))"
    name = spec.service
    return [
        _alert("LatlabGatewayDown", f"up{sel} == 0", w, "page",
               f"{name}: Prometheus cannot scrape latlab gateway",
               "Its /metrics did not answer: the gateway is down or unreachable, and so is "
               "every model behind it for clients that use it."),
        _alert("LatlabGatewayNoHealthyUpstream", f"max by (job, instance) ({g.healthy}{sel}) == 0",
               w, "page", f"{name}: latlab gateway has no healthy upstream",
               "Every upstream is ejected: generation requests are answered 503. GET /health on "
               "the gateway says why each failed."),
        _alert("LatlabGatewayUpstreamEjected", f"{g.healthy}{sel} == 0", w, "ticket",
               f"{name}: upstream {{{{ $labels.upstream }}}} is ejected by latlab gateway",
               "Its health checks or calls failed; the others take its traffic until it "
               "answers again."),
        _alert("LatlabGatewayServerErrors", f"{errors} > {spec.error_rate_threshold:g}", w,
               "page", f"{name}: over {spec.error_rate_threshold:.0%} of gateway answers are 5xx",
               "Upstreams fail or are unreachable (502/503 with the reason in the body)."),
        _alert("LatlabGatewaySaturated", f"{lag} > {spec.gateway_lag_s:g}", w, "ticket",
               f"{name}: a latlab gateway process is CPU-bound (event-loop lag p99 over "
               f"{spec.gateway_lag_s * 1000:g} ms)",
               "Every request and chunk through it waits that long: TTFT grows while nothing "
               "fails. Spread the traffic over more gateway processes or hosts."),
        _alert("LatlabGatewayCacheFailing", f"rate({g.cache_errors}{sel}[{w}]) > 0", w,
               "ticket", f"{name}: latlab gateway's response cache store fails",
               "SQLite or Redis does not answer: the gateway serves uncached, so repeated "
               "requests take a miss's TTFT."),
        _alert("LatlabGatewayLimitStoreFailing", f"rate({g.limit_store_errors}{sel}[{w}]) > 0",
               w, "ticket", f"{name}: latlab gateway decides rate limits per process",
               "Redis does not answer: each gateway process counts a key's requests on its own, "
               "so a key can exceed its limit by the number of processes."),
    ]  # fmt: skip
