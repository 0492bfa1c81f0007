"""The burn-rate math, proven by promtool: synthetic counters in, which alerts fire out.

Rules are the ones ``latlab alerts`` generates with its defaults (30-day period: page at
14.4x over 1h/5m or 6x over 6h/30m, ticket at 3x over 1d/2h or 1x over 3d/6h) for
"p99 TTFT <= 500 ms" (error budget 1%) and "99.5% of generation requests without a 5xx".
"""

from __future__ import annotations

import pytest
import yaml

from latlab.monitor.buckets import default_edges
from latlab.monitor.names import LATLAB
from latlab.monitor.promtool import check_rules, unit_test_rules
from latlab.monitor.rules import build_rules, to_yaml
from latlab.monitor.slo import LatencySLO, default_windows
from latlab.monitor.spec import RuleSpec
from monitor.helpers import needs_prometheus

pytestmark = needs_prometheus

COUNT = 'latlab:time_to_first_token_seconds_count{job="latlab"}'
GOOD = 'latlab:time_to_first_token_seconds_bucket{job="latlab",le="0.5"}'
PAGE, TICKET = "LatlabTTFTBurnRatePage", "LatlabTTFTBurnRateTicket"


def _rules(tmp_path, threshold_s=0.5, rounding="down"):
    spec = RuleSpec(
        names=LATLAB, job="latlab", rounding=rounding, windows=default_windows(),
        latency=(LatencySLO(role="ttft", threshold_s=threshold_s, target=0.99),),
        availability=0.995, edges={"ttft": default_edges(LATLAB, "ttft")},
    )  # fmt: skip
    path = tmp_path / "rules.yml"
    path.write_text(to_yaml(build_rules(spec)))
    return path


def _firing(alert: str, at: str, fires: bool, slo: str = "ttft") -> dict:
    severity = "page" if alert.endswith("Page") else "ticket"
    labels = (f'ALERTS{{alertname="{alert}",alertstate="firing",service="latlab",'
              f'severity="{severity}",slo="{slo}"}}')  # fmt: skip
    return {"expr": f'ALERTS{{alertname="{alert}",alertstate="firing"}}', "eval_time": at,
            "exp_samples": [{"labels": labels, "value": 1}] if fires else []}  # fmt: skip


def _run(tmp_path, rules, series: dict[str, str], checks: list[dict]) -> None:
    test = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m",
                   "input_series": [{"series": s, "values": v} for s, v in series.items()],
                   "promql_expr_test": checks}],
    }  # fmt: skip
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    result = unit_test_rules(path)
    assert result is not None and result.ok, result.output if result else "no promtool"


def _near(expr: str, value: float, at: str, labels: str) -> dict:
    """``expr`` equals ``value`` up to 1e-9 (promtool 2.x compares floats exactly)."""
    return {
        "expr": f"abs({expr} - {value!r}) < bool 1e-9",
        "eval_time": at,
        "exp_samples": [{"labels": labels, "value": 1}],
    }


def _ratio(value: float, at: str, window: str = "5m") -> dict:
    expr = f'slo:sli_error:ratio_rate{window}{{slo="ttft"}}'
    return _near(expr, value, at, f'{{service="latlab",slo="ttft",slo_window="{window}"}}')


def test_generated_rules_pass_promtool_check(tmp_path):
    result = check_rules(_rules(tmp_path))
    assert result is not None and result.ok, result.output


@pytest.mark.parametrize(
    ("bad_per_100", "page", "ticket"),
    [(20, True, True),  # burn 20x: over 14.4x -> page (and ticket)
     (10, True, True),  # burn 10x: under 14.4x, over 6x (6h/30m) -> page
     (2, False, True),  # burn 2x: only the 3d/6h pair at 1x -> ticket
     (0.5, False, False)],  # burn 0.5x: within budget
)  # fmt: skip
def test_which_alerts_fire_at_each_burn_rate(tmp_path, bad_per_100, page, ticket):
    good = 100 - bad_per_100
    series = {COUNT: "0+100x90", GOOD: f"0+{good:g}x90"}
    checks = [_ratio(bad_per_100 / 100, "45m"), _firing(PAGE, "45m", page),
              _firing(TICKET, "45m", ticket)]  # fmt: skip
    _run(tmp_path, _rules(tmp_path), series, checks)


def test_page_clears_once_every_short_window_is_clean_while_the_ticket_stays(tmp_path):
    # 20% slow for an hour, then none: the 5m window clears first, but the 6h/30m pair keeps
    # paging until the 30m window is under 6% too; the 1d/2h ticket stays.
    series = {COUNT: "0+100x150", GOOD: "0+80x60 4900+100x89"}
    checks = [_firing(PAGE, "55m", True), _ratio(0.0, "70m"), _firing(PAGE, "70m", True),
              _firing(PAGE, "95m", False), _firing(TICKET, "95m", True)]  # fmt: skip
    _run(tmp_path, _rules(tmp_path), series, checks)


def test_error_budget_bookkeeping(tmp_path):
    series = {COUNT: "0+1000x60", GOOD: "0+995x60"}  # 0.5% slow: half the 1% budget
    labels = '{service="latlab",slo="ttft"}'
    # Each record keeps the window it was computed over: the shortest one, and the period.
    checks = [_near(f"slo:current_burn_rate:ratio{labels}", 0.5, "30m",
                    '{service="latlab",slo="ttft",slo_window="5m"}'),
              _near(f"slo:period_error_budget_remaining:ratio{labels}", 0.5, "30m",
                    '{service="latlab",slo="ttft",slo_window="30d"}')]  # fmt: skip
    _run(tmp_path, _rules(tmp_path), series, checks)


@pytest.mark.parametrize(("rounding", "expected"), [("down", 0.1), ("up", 0.0)])
def test_a_threshold_between_edges_measures_the_edge_it_was_rounded_to(tmp_path, rounding,
                                                                       expected):  # fmt: skip
    # SLO 300 ms; 10% of requests take between 250 and 500 ms, none longer.
    under_250ms = 'latlab:time_to_first_token_seconds_bucket{job="latlab",le="0.25"}'
    series = {COUNT: "0+100x40", GOOD: "0+100x40", under_250ms: "0+90x40"}
    _run(tmp_path, _rules(tmp_path, 0.3, rounding), series, [_ratio(expected, "30m")])


def test_availability_slo_counts_5xx_of_generation_requests_only(tmp_path):
    http = 'latlab:http_requests_total{{job="latlab",handler="{h}",status="{s}"}}'
    series = {
        http.format(h="/v1/completions", s="2xx"): "0+99x60",
        http.format(h="/v1/completions", s="5xx"): "0+1x60",  # 1%: burn 2x the 0.5% budget
        http.format(h="/metrics", s="5xx"): "0+50x60",  # not a generation request
    }
    checks = [_firing("LatlabAvailabilityBurnRatePage", "45m", False, "availability"),
              _firing("LatlabAvailabilityBurnRateTicket", "45m", True, "availability")]  # fmt: skip
    _run(tmp_path, _rules(tmp_path), series, checks)


def _gateway_rules(tmp_path):
    spec = RuleSpec(names=LATLAB, job="latlab", gateway_job="gw", windows=default_windows(),
                    latency=(LatencySLO(role="ttft", threshold_s=0.5, target=0.99),),
                    edges={"ttft": default_edges(LATLAB, "ttft")})  # fmt: skip
    path = tmp_path / "rules.yml"
    path.write_text(to_yaml(build_rules(spec)))
    return path


def _gateway_alert(alert: str, at: str, firing: list[str]) -> dict:
    """``alert`` is firing at ``at`` for exactly the series with these extra labels."""
    severity = "page" if alert in ("LatlabGatewayNoHealthyUpstream", "LatlabGatewayServerErrors",
                                   "LatlabGatewayDown") else "ticket"  # fmt: skip
    samples = [{"labels": f'ALERTS{{alertname="{alert}",alertstate="firing",instance="i",'
                          f'job="gw",severity="{severity}"{extra}}}', "value": 1}
               for extra in firing]  # fmt: skip
    return {"expr": f'ALERTS{{alertname="{alert}",alertstate="firing"}}', "eval_time": at,
            "exp_samples": samples}  # fmt: skip


def test_gateway_upstream_alerts(tmp_path):
    # Upstream a is ejected from minute 10 on, b from minute 30: a ticket for each upstream
    # while any remains, a page once none does (after the 5-minute `for`).
    healthy = 'latlab:gateway_upstream_healthy{{job="gw",instance="i",upstream="{u}"}}'
    series = {healthy.format(u="a"): "1x9 0x50", healthy.format(u="b"): "1x29 0x30"}
    ejected = "LatlabGatewayUpstreamEjected"
    checks = [_gateway_alert(ejected, "12m", []),
              _gateway_alert(ejected, "20m", [',upstream="a"']),
              _gateway_alert("LatlabGatewayNoHealthyUpstream", "20m", []),
              _gateway_alert("LatlabGatewayNoHealthyUpstream", "40m", [""])]  # fmt: skip
    _run(tmp_path, _gateway_rules(tmp_path), series, checks)


def test_gateway_errors_lag_and_stores(tmp_path):
    # From minute 20: 10% of answers are 502 (over the 5% threshold), the loop lags 100 ms at
    # p99, and the cache store fails; the limit store never does.
    req = ('latlab:gateway_requests_total{{job="gw",instance="i",endpoint="/completions",'
           'status="{s}"}}')  # fmt: skip
    lag = 'latlab:gateway_event_loop_lag_seconds_bucket{{job="gw",instance="i",le="{le}"}}'
    series = {
        req.format(s="200"): "0+100x60",
        req.format(s="502"): "0x20 0+11x40",
        lag.format(le="0.05"): "0+240x20 4800+100x40",
        lag.format(le="0.1"): "0+240x60",
        lag.format(le="+Inf"): "0+240x60",
        'latlab:gateway_cache_errors_total{job="gw",instance="i"}': "0x20 0+5x40",
        'latlab:gateway_limit_store_errors_total{job="gw",instance="i"}': "0x60",
    }
    checks = [_gateway_alert(a, at, [""] if fires else [])
              for a in ("LatlabGatewayServerErrors", "LatlabGatewaySaturated",
                        "LatlabGatewayCacheFailing")
              for at, fires in (("15m", False), ("40m", True))]  # fmt: skip
    checks.append(_gateway_alert("LatlabGatewayLimitStoreFailing", "40m", []))
    _run(tmp_path, _gateway_rules(tmp_path), series, checks)
