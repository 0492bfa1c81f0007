"""A Grafana dashboard for latlab serve or vLLM, with metric names chosen by version.

Panels: the server's TTFT / ITL / TPOT / E2E / queue percentiles, the ``latlab watch`` probe's
client-side TTFT beside the server's, token and request rates, running and waiting requests,
KV cache use, prefix cache hit rate, preemptions, speculative decoding acceptance, HTTP status
classes, and the SLO error budget from ``latlab alerts``' recording rules.

With ``gateway=True`` a row for ``latlab gateway`` in front of the servers: its TTFT by cache
outcome, cache outcomes and hit share, responses by status, upstream latency, calls, load and
health, routing decisions, the event loop's lag, and refusals (401, 429).

Every query is built from ``MetricNames`` (``GatewayNames``) and records the series it reads, so a
test (or ``latlab dashboard --check-metrics URL`` / ``--check-gateway-metrics URL``) can prove
each panel resolves on a real server and a real gateway.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from latlab.monitor.names import GATEWAY, GATEWAY_OPTIONAL, GatewayNames, MetricNames

SEL = '{job=~"$job",model_name=~"$model_name"}'
WATCH = '{job=~"$watch_job"}'
GW = '{job=~"$gateway_job"}'
RATE = "$__rate_interval"
# Feature a panel needs beyond the server's core metrics; checks skip what is not configured.
REQUIRES = ("watch", "rules", "spec_decode", "http", "gateway")


@dataclass(kw_only=True, frozen=True, slots=True)
class Query:
    expr: str
    legend: str
    series: tuple[str, ...]  # series names the expression reads (for checks)


@dataclass(kw_only=True, slots=True)
class Panel:
    title: str
    unit: str
    queries: list[Query]
    description: str = ""
    requires: str | None = None  # one of REQUIRES, or None for core server metrics
    width: int = 12

    def series(self) -> set[str]:
        return {s for q in self.queries for s in q.series}


@dataclass(kw_only=True, slots=True)
class Dashboard:
    title: str
    names: MetricNames
    panels: list[Panel] = field(default_factory=list)

    def to_grafana(self) -> dict[str, Any]:
        return _grafana(self)

    def to_json(self) -> str:
        return json.dumps(self.to_grafana(), indent=2) + "\n"


def _quantiles(hist: str, sel: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> list[Query]:
    out = [
        Query(
            expr=f"histogram_quantile({q}, sum by (le) (rate({hist}_bucket{sel}[{RATE}])))",
            legend=f"p{q * 100:g}",
            series=(f"{hist}_bucket",),
        )
        for q in qs
    ]
    mean = f"sum(rate({hist}_sum{sel}[{RATE}])) / sum(rate({hist}_count{sel}[{RATE}]))"
    out.append(Query(expr=mean, legend="mean", series=(f"{hist}_sum", f"{hist}_count")))
    return out


def _rate(series: str, legend: str, by: str = "", sel: str = SEL) -> Query:
    grouping = f" by ({by})" if by else ""
    return Query(
        expr=f"sum{grouping} (rate({series}{sel}[{RATE}]))", legend=legend, series=(series,)
    )


def _ratio(num: str, den: str, legend: str) -> Query:
    expr = f"sum(rate({num}{SEL}[{RATE}])) / sum(rate({den}{SEL}[{RATE}]))"
    return Query(expr=expr, legend=legend, series=(num, den))


def _gauge(series: str, legend: str, sel: str = SEL) -> Query:
    return Query(expr=f"sum({series}{sel})", legend=legend, series=(series,))


def latency_panels(n: MetricNames) -> list[Panel]:
    panels = [
        Panel(
            title="Time to first token (server)",
            unit="s",
            queries=_quantiles(n.ttft, SEL),
            description=f"{n.ttft}: arrival at the server to the first token.",
        ),
        Panel(
            title="Inter-token latency (server)",
            unit="s",
            queries=_quantiles(n.itl, SEL),
            description=f"{n.itl}.",
        ),
    ]
    if n.tpot:
        panels.append(
            Panel(
                title="Time per output token, per request (server)",
                unit="s",
                queries=_quantiles(n.tpot, SEL),
                description=f"{n.tpot}.",
            )
        )
    panels.append(
        Panel(
            title="End-to-end request latency (server)",
            unit="s",
            queries=_quantiles(n.e2e, SEL),
            description=f"{n.e2e}.",
        )
    )
    if n.queue:
        panels.append(
            Panel(
                title="Queue time (server)",
                unit="s",
                queries=_quantiles(n.queue, SEL, (0.5, 0.99)),
                description=f"{n.queue}: waiting before the first schedule.",
            )
        )
    return panels


def probe_panels(n: MetricNames) -> list[Panel]:
    client = "latlab_watch_ttft_seconds"
    beside = [q for q in _quantiles(client, WATCH, (0.5, 0.99)) if q.legend != "mean"]
    beside = [Query(expr=q.expr, legend=f"client {q.legend}", series=q.series) for q in beside]
    server = _quantiles(n.ttft, SEL, (0.99,))[0]
    beside.append(Query(expr=server.expr, legend="server p99", series=server.series))
    return [
        Panel(
            title="TTFT: what the probe sees vs the server",
            unit="s",
            queries=beside,
            requires="watch",
            description="latlab watch measures TTFT at the client; the "
            "difference to the server's own figure is network, proxies and queueing in front.",
        ),
        Panel(
            title="Probe: client minus server",
            unit="s",
            requires="watch",
            queries=[
                Query(
                    expr=f"latlab_watch_server_gap_seconds{WATCH}",
                    legend="{{metric}}",
                    series=("latlab_watch_server_gap_seconds",),
                )
            ],
            description="Mean TTFT the probe measured minus the server's mean over the same "
            "cycle (server figures include other traffic).",
        ),
        Panel(
            title="Probe: SLO status and errors",
            unit="short",
            requires="watch",
            queries=[
                Query(
                    expr=f"latlab_watch_slo_ok{WATCH}",
                    legend="SLO ok (1 = yes)",
                    series=("latlab_watch_slo_ok",),
                ),
                _rate("latlab_watch_probes_total", "{{outcome}} /s", "outcome", WATCH),
            ],
        ),
    ]


def load_panels(n: MetricNames) -> list[Panel]:
    panels = [
        Panel(
            title="Token throughput",
            unit="short",
            queries=[
                _rate(n.prompt_tokens, "prompt tokens/s"),
                _rate(n.generation_tokens, "generated tokens/s"),
            ],
        ),
        Panel(
            title="Finished requests by reason",
            unit="reqps",
            queries=[_rate(n.request_success, "{{finished_reason}}", "finished_reason")],
        ),
        Panel(
            title="Scheduler: running and waiting",
            unit="short",
            queries=[_gauge(n.running, "running"), _gauge(n.waiting, "waiting")],
        ),
        Panel(
            title="KV cache usage",
            unit="percentunit",
            queries=[Query(expr=f"max({n.kv_usage}{SEL})", legend="used", series=(n.kv_usage,))],
        ),
        Panel(title="Preemptions", unit="short", queries=[_rate(n.preemptions, "preemptions/s")]),
    ]
    if n.prefix_queries and n.prefix_hits:
        panels.append(
            Panel(
                title="Prefix cache hit rate",
                unit="percentunit",
                queries=[_ratio(n.prefix_hits, n.prefix_queries, "hit rate")],
            )
        )
    panels.append(
        Panel(
            title="Speculative decoding acceptance",
            unit="percentunit",
            requires="spec_decode",
            queries=[_ratio(n.spec_accepted_tokens, n.spec_draft_tokens, "accepted / drafted")],
            description="Empty unless speculative decoding is configured.",
        )
    )
    if n.http_requests:
        http_sel = '{job=~"$job"}'
        panels.append(
            Panel(
                title="HTTP responses by status",
                unit="reqps",
                requires="http",
                queries=[_rate(n.http_requests, "{{status}}", "status", http_sel)],
            )
        )
    return panels


def budget_panels() -> list[Panel]:
    def q(series: str) -> Query:
        return Query(expr=f'{series}{{service=~"$service"}}', legend="{{slo}}", series=(series,))

    return [
        Panel(
            title="SLO burn rate (shortest window)",
            unit="short",
            requires="rules",
            queries=[q("slo:current_burn_rate:ratio")],
            description="1 = burning the error budget exactly as fast as the period allows "
            "(latlab alerts' recording rules).",
        ),
        Panel(
            title="Error budget left in the period",
            unit="percentunit",
            requires="rules",
            queries=[q("slo:period_error_budget_remaining:ratio")],
        ),
    ]


def _quantile_by(hist: str, label: str, q: float, sel: str = GW) -> Query:
    expr = f"histogram_quantile({q}, sum by (le, {label}) (rate({hist}_bucket{sel}[{RATE}])))"
    return Query(expr=expr, legend=f"{{{{{label}}}}} p{q * 100:g}", series=(f"{hist}_bucket",))


def _gw(title: str, unit: str, queries: list[Query], description: str = "") -> Panel:
    return Panel(title=title, unit=unit, queries=queries, requires="gateway",
                 description=description)  # fmt: skip


def gateway_panels(g: GatewayNames = GATEWAY) -> list[Panel]:
    """The ``latlab gateway`` row: what it adds, what its cache saves, how its upstreams fare."""
    hit = '{job=~"$gateway_job",result=~"hit|coalesced"}'
    cacheable = '{job=~"$gateway_job",result=~"hit|coalesced|miss"}'
    share = f"sum(rate({g.cache}{hit}[{RATE}])) / sum(rate({g.cache}{cacheable}[{RATE}]))"
    lane = f"sum(rate({g.direct_lane}{GW}[{RATE}])) / sum(rate({g.cache}{GW}[{RATE}]))"
    return [
        _gw("Gateway TTFT by cache outcome", "s",
            [_quantile_by(g.ttft, "cache", 0.5), _quantile_by(g.ttft, "cache", 0.99)],
            "The request's first byte at the gateway to its first content chunk sent: hits "
            "and coalesced requests beside misses (what the cache saves)."),
        _gw("Cache outcomes", "reqps", [_rate(g.cache, "{{result}}", "result", GW)],
            "bypass: not cacheable (sampled, no-store) or the cache is off."),
        _gw("Cache hit share (of cacheable requests)", "percentunit",
            [Query(expr=share, legend="hit + coalesced", series=(g.cache,))]),
        _gw("Cache store", "short",
            [Query(expr=f"min({g.cache_available}{GW})", legend="available (1 = yes)",
                   series=(g.cache_available,)),
             _rate(g.cache_errors, "store errors/s", sel=GW)],
            "0 while the store (SQLite, Redis) fails and the gateway serves uncached; also 0 "
            "with --cache off."),
        _gw("Gateway responses by status", "reqps",
            [_rate(g.requests, "{{status}}", "status", GW)]),
        _gw("Upstream response head latency", "s",
            [_quantile_by(g.upstream_latency, "upstream", 0.5),
             _quantile_by(g.upstream_latency, "upstream", 0.99)],
            "Request written upstream to the upstream's response headers."),
        _gw("Upstream calls by outcome", "reqps",
            [_rate(g.upstream_requests, "{{upstream}} {{outcome}}", "upstream, outcome", GW),
             _rate(g.retries, "retried elsewhere/s", sel=GW)]),
        _gw("Requests in flight per upstream (as the gateway sees them)", "short",
            [Query(expr=f"sum by (upstream) ({g.outstanding}{GW})", legend="{{upstream}}",
                   series=(g.outstanding,))]),
        _gw("Upstream health", "short",
            [Query(expr=f"min by (upstream) ({g.healthy}{GW})", legend="{{upstream}}",
                   series=(g.healthy,))],
            "1 admitted, 0 ejected after failed health checks or calls."),
        _gw("Routing decisions", "reqps",
            [_rate(g.routes, "{{policy}} {{choice}}", "policy, choice", GW)],
            "prefix routing: home (the prefix's upstream), spill (the load bound at work), "
            "fallback (no prefix)."),
        _gw("Is one gateway process keeping up?", "s",
            [_quantile_by(g.loop_lag, "instance", 0.99),
             _quantile_by(g.request_wait, "instance", 0.99)],
            "Event-loop lag p99 (first) and a request's wait before its handler (second): tens "
            "of milliseconds mean the process is CPU-bound and TTFT grows by as much."),
        _gw("Requests on the direct lane", "percentunit",
            [Query(expr=lane, legend="direct lane", series=(g.direct_lane, g.cache))],
            "Share of generation requests answered from the HTTP protocol's callbacks; the "
            "rest waited for a limit, trimming or a cache read, or came with an Origin header."),
        _gw("Keys, limits and trimming", "short",
            [_rate(g.auth_failures, "401/s", sel=GW),
             _rate(g.rate_limited, "429 {{limit}}/s", "limit", GW),
             _rate(g.limit_store_errors, "limits decided in-process/s", sel=GW),
             _rate(g.trimmed_tokens, "trimmed tokens/s", sel=GW)]),
    ]  # fmt: skip


def build_dashboard(
    names: MetricNames, *, title: str | None = None, gateway: bool = False
) -> Dashboard:
    """The server's panels; with ``gateway`` also the row of the ``latlab gateway`` in front."""
    panels = latency_panels(names) + probe_panels(names) + load_panels(names) + budget_panels()
    if gateway:
        panels += gateway_panels()
    version = f" {names.since}" if names.backend == "vllm" else ""
    return Dashboard(title=title or f"latlab: {names.backend}{version}", names=names, panels=panels)


_ROWS = (
    ("Latency (server histograms)", None),
    ("What users see (latlab watch)", "watch"),
    ("Load and saturation", "load"),
    ("SLO error budget (latlab alerts rules)", "rules"),
    ("latlab gateway: cache, routing, upstreams", "gateway"),
)


def _row_of(panel: Panel) -> str | None:
    if panel.requires in ("watch", "rules", "gateway"):
        return panel.requires
    if panel.unit == "s":
        return None
    return "load"


def _variable(name: str, query: str, *, all_value: str = ".*", default: str | None = None) -> dict:
    current = {"text": default, "value": default} if default else {}
    return {
        "name": name,
        "type": "query",
        "label": name,
        "refresh": 2,
        "sort": 1,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "definition": query,
        "query": {"query": query, "refId": name},
        "includeAll": default is None,
        "multi": default is None,
        "allValue": all_value,
        "current": current,
    }


def _templating(names: MetricNames, *, gateway: bool) -> dict[str, Any]:
    ttft = f"{names.ttft}_count"
    gateway_job = _variable(
        "gateway_job", f"label_values({GATEWAY.requests}, job)", default="latlab-gateway"
    )
    return {
        "list": [
            {
                "name": "datasource",
                "type": "datasource",
                "label": "Prometheus",
                "query": "prometheus",
            },
            _variable("job", f"label_values({ttft}, job)"),
            _variable("model_name", f'label_values({ttft}{{job=~"$job"}}, model_name)'),
            _variable(
                "watch_job",
                "label_values(latlab_watch_ttft_seconds_count, job)",
                default="latlab-watch",
            ),
            _variable("service", "label_values(slo:objective:ratio, service)"),
            *([gateway_job] if gateway else []),
        ]
    }


def _grafana_panel(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "custom": {"lineWidth": 1}},
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "expr": q.expr,
                "legendFormat": q.legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
            }
            for i, q in enumerate(panel.queries)
        ],
    }


def _has_gateway(d: Dashboard) -> bool:
    return any(p.requires == "gateway" for p in d.panels)


def _grafana(d: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for row_title, key in _ROWS:
        members = [p for p in d.panels if _row_of(p) == key]
        if not members:
            continue
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x = pid + 1, y + 1, 0
        for panel in members:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_grafana_panel(panel, pid, x, y))
            pid, x = pid + 1, x + panel.width
        y += 8
    uid = hashlib.sha1(f"{d.title}".encode()).hexdigest()[:12]
    return {
        "title": d.title,
        "uid": f"latlab-{uid}",
        "tags": ["latlab", d.names.backend, *(["gateway"] if _has_gateway(d) else [])],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "description": f"Generated by latlab dashboard for {d.names.backend} "
        f"(metric names of {d.names.since}).",
        "templating": _templating(d.names, gateway=_has_gateway(d)),
        "annotations": {"list": []},
        "panels": panels,
    }


def check_against_scrape(dashboard: Dashboard, present: set[str]) -> list[str]:
    """Panels whose series a server's scrape lacks: '<panel>: <series>' (optional features,
    the gateway's row included, skipped)."""
    problems = []
    for panel in dashboard.panels:
        if panel.requires in REQUIRES:
            continue
        problems += [f"{panel.title}: {s}" for s in sorted(panel.series() - present)]
    return problems


def check_gateway_scrape(dashboard: Dashboard, present: set[str]) -> list[str]:
    """The gateway row's panels whose series a gateway's scrape lacks (a counter that appears
    only with its first event, such as 429s, is not required)."""
    optional = {getattr(GATEWAY, name) for name in GATEWAY_OPTIONAL}
    problems = []
    for panel in dashboard.panels:
        if panel.requires != "gateway":
            continue
        problems += [f"{panel.title}: {s}" for s in sorted(panel.series() - present - optional)]
    return problems


def concrete(expr: str, *, rate_interval: str = "1m") -> str:
    """A panel expression with Grafana's variables filled in, to run on Prometheus directly."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace('=~"$job"', '=~".+"')
        .replace('=~"$model_name"', '=~".+"')
        .replace('=~"$watch_job"', '=~".+"')
        .replace('=~"$service"', '=~".+"')
        .replace('=~"$gateway_job"', '=~".+"')
    )
