"""The proof on real parts: Prometheus scrapes latlab serve and latlab watch, evaluates the
rules latlab alerts wrote, and the TTFT burn-rate alert goes inactive -> firing -> inactive as
the server is made slow and fast again. Every dashboard query resolves on that Prometheus."""

from __future__ import annotations

import contextlib

import pytest

from latlab.monitor.dashboard import build_dashboard, concrete
from latlab.monitor.names import LATLAB
from latlab.monitor.preview import render_preview
from latlab.procs import free_port, group_members
from latlab.testing.prometheus import PrometheusServer
from monitor.helpers import latlab_process, needs_prometheus, start_serve

# timing: an alert fires on a slowed server within its window (the stack is one fixture).
pytestmark = [needs_prometheus, pytest.mark.slow, pytest.mark.timing]
pytest.importorskip("torch")

SLOW_STEP_MS = "400"  # every engine step sleeps this long: TTFT > 250 ms, the SLO
ALERT = "LatlabTTFTBurnRatePage"


def _alerts_args(rules: str) -> list[str]:
    # p99 TTFT <= 250 ms (a bucket edge), windows scaled down so the test takes a minute:
    # page when over 14.4% of requests were slow in the last 30 s and the last 6 s.
    windows = "page=30s/6s@14.4,ticket=60s/12s@3"
    return ["alerts", "--slo-ttft-ms", "250", "--slo-tpot-ms", "100", "--percentile", "99",
            "--objective", "99.5%", "--job", "latlab", "--windows", windows, "--period", "1h",
            "--saturation-window", "5s", "-o", rules]  # fmt: skip


def _watch_args(url: str, metrics_port: int) -> list[str]:
    return ["watch", url, "--interval", "0.5s", "--max-rate", "4", "--max-tokens", "4",
            "--prompt-tokens", "16", "--slo-ttft-ms", "250", "--window", "10s",
            "--metrics-port", str(metrics_port), "--timeout", "30s"]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """latlab serve (fast), latlab watch, and Prometheus with latlab alerts' rules."""
    tmp = tmp_path_factory.mktemp("live")
    rules = tmp / "rules.yml"
    made = latlab_process("alerts", _alerts_args(str(rules)), tmp)
    made.start()
    made.proc.wait(timeout=60)
    assert made.proc.returncode == 0, made.log_tail()
    serve_port, watch_port = free_port(), free_port()
    server = start_serve(tmp, serve_port)
    watch = latlab_process("watch", _watch_args(f"http://127.0.0.1:{serve_port}/v1",
                                                watch_port), tmp)  # fmt: skip
    watch.start()
    jobs = {"latlab": [f"127.0.0.1:{serve_port}"], "latlab-watch": [f"127.0.0.1:{watch_port}"]}
    prom = PrometheusServer(tmp, jobs=jobs, rule_files=(rules,)).start()
    state = {"server": server, "tmp": tmp, "port": serve_port}
    try:
        prom.wait_until(lambda api: len(api.query("up == 1")) == 2, timeout_s=60,
                        what="both targets up")  # fmt: skip
        yield prom, state
    finally:
        pgids = [p.pid for p in (state["server"], watch, prom.process) if p.pid]
        prom.stop()
        watch.stop()
        state["server"].stop()
        assert not any(group_members(g) for g in pgids), "a process outlived the test"


def _restart(state: dict, *extra: str) -> None:
    state["server"].stop()
    state["server"] = start_serve(state["tmp"], state["port"], *extra,
                                  name=f"serve{len(extra)}")  # fmt: skip


def test_every_dashboard_query_resolves_on_a_live_scrape(stack):
    prom, _ = stack
    board = build_dashboard(LATLAB)
    prom.wait_until(lambda api: api.query("slo:current_burn_rate:ratio"), timeout_s=60,
                    what="the recording rules")  # fmt: skip
    prom.wait_until(lambda api: api.query("latlab_watch_server_gap_seconds"), timeout_s=60,
                    what="the watch's server gap")  # fmt: skip
    # A rate() needs two scrapes of a series: the watch's first sample alone resolves nothing
    # (seen once when this test ran first, right after the gauge appeared), so poll until every
    # query resolves, then name the ones that never did.
    empty = [(panel.title, concrete(query.expr, rate_interval="15s"))
             for panel in board.panels for query in panel.queries]  # fmt: skip

    def every_query_resolves(api) -> bool:
        empty[:] = [(title, expr) for title, expr in empty if not api.query(expr)]
        return not empty

    with contextlib.suppress(AssertionError):
        prom.wait_until(every_query_resolves, timeout_s=60, what="every dashboard query")
    assert not empty, "\n".join(f"{title}: {expr}" for title, expr in empty)


def test_preview_renders_every_panel_from_the_live_prometheus(stack, tmp_path):
    prom, _ = stack
    page = render_preview(build_dashboard(LATLAB), prom.url, range_s=120)
    (tmp_path / "preview.html").write_text(page)
    cards = page.count("class='card'")
    assert cards == len(build_dashboard(LATLAB).panels)
    assert page.count("<polyline") >= cards - 1 and "<script" not in page


def test_ttft_alert_fires_when_the_server_is_slow_and_clears_when_it_recovers(stack):
    prom, state = stack
    prom.wait_until(lambda api: prom.rule_state(ALERT) == "inactive" and api.query(
        'slo:sli_error:ratio_rate6s{slo="ttft"} == 0'), timeout_s=60,
        what="a healthy, evaluated TTFT SLO")  # fmt: skip
    _restart(state, "--debug-step-delay-ms", SLOW_STEP_MS)
    prom.wait_until(lambda api: "firing" in prom.alert_states(ALERT), timeout_s=120,
                    what=f"{ALERT} firing")  # fmt: skip
    assert prom.api.query("latlab_watch_slo_ok == 0"), "the probe should see the breach too"
    _restart(state)
    prom.wait_until(lambda api: prom.rule_state(ALERT) == "inactive", timeout_s=120,
                    what=f"{ALERT} back to inactive")  # fmt: skip
    assert not prom.alert_states(ALERT)
