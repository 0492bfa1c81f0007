"""The Grafana dashboard: every core panel resolves on a real server's /metrics, by version."""

import json

import pytest

from latlab.monitor.dashboard import (
    build_dashboard,
    check_against_scrape,
    check_gateway_scrape,
    concrete,
)
from latlab.monitor.names import LATLAB, VLLM_VERSIONS, resolve
from latlab.monitor.scrape import Scrape
from monitor.helpers import FIXTURES

VLLM_SCRAPE = Scrape.parse((FIXTURES / "vllm-0.32.0.metrics.txt").read_text())


def test_vllm_dashboard_resolves_on_a_live_vllm_032_scrape():
    board = build_dashboard(resolve("vllm", "0.32.0").names)
    assert check_against_scrape(board, VLLM_SCRAPE.names()) == []
    titles = {p.title for p in board.panels}
    assert {"Prefix cache hit rate", "KV cache usage", "Preemptions",
            "Time per output token, per request (server)"} <= titles  # fmt: skip


@pytest.mark.parametrize("version", [n.since for n in VLLM_VERSIONS[:3]])
def test_a_dashboard_for_an_older_vllm_would_be_empty_on_a_new_one(version):
    # The breakage vLLM's renames caused (gpu_cache_usage_perc, time_per_output_token_seconds):
    # the check names the missing series instead of showing empty panels.
    problems = check_against_scrape(build_dashboard(resolve("vllm", version).names),
                                    VLLM_SCRAPE.names())  # fmt: skip
    assert any("gpu_cache_usage_perc" in p or "time_per_output_token" in p for p in problems)


def test_latlab_dashboard_resolves_on_latlab_serve(latlab_scrape):
    assert check_against_scrape(build_dashboard(LATLAB), latlab_scrape.names()) == []


def test_grafana_json_shape():
    board = build_dashboard(LATLAB)
    doc = json.loads(board.to_json())
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert [p["title"] for p in panels if p["type"] == "row"] == [
        "Latency (server histograms)", "What users see (latlab watch)", "Load and saturation",
        "SLO error budget (latlab alerts rules)"]  # fmt: skip
    variables = [v["name"] for v in doc["templating"]["list"]]
    assert variables == ["datasource", "job", "model_name", "watch_job", "service"]
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert any("latlab_watch_ttft_seconds_bucket" in e for e in exprs)
    assert all("$__rate_interval" in e for e in exprs if "rate(" in e)


def test_concrete_fills_grafana_variables():
    expr = 'rate(x{job=~"$job",model_name=~"$model_name"}[$__rate_interval])'
    assert concrete(expr, rate_interval="15s") == 'rate(x{job=~".+",model_name=~".+"}[15s])'


def test_the_gateway_row_resolves_on_a_real_gateway(gateway_scrape, latlab_scrape):
    board = build_dashboard(LATLAB, gateway=True)
    gateway = [p for p in board.panels if p.requires == "gateway"]
    assert len(gateway) == 13
    assert check_gateway_scrape(board, gateway_scrape.names()) == []
    # the server's check ignores the gateway row, and the gateway's check finds it on a server
    assert check_against_scrape(board, latlab_scrape.names()) == []
    missing = check_gateway_scrape(board, latlab_scrape.names())
    assert "Upstream health: latlab:gateway_upstream_healthy" in missing
    # what no traffic creates is not required (429s), what every gateway has is
    assert not any("rate_limited" in m for m in check_gateway_scrape(board, set()))


def test_the_gateway_row_only_when_asked():
    plain = json.loads(build_dashboard(LATLAB).to_json())
    doc = json.loads(build_dashboard(LATLAB, gateway=True).to_json())
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows[-1] == "latlab gateway: cache, routing, upstreams"
    assert len(rows) == len([p for p in plain["panels"] if p["type"] == "row"]) + 1
    assert [v["name"] for v in doc["templating"]["list"]][-1] == "gateway_job"
    assert "gateway" in doc["tags"] and "gateway" not in plain["tags"]
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    gateway = [e for e in exprs if "latlab:gateway_" in e]
    assert gateway and all('job=~"$gateway_job"' in e for e in gateway)
    assert 'job=~"$gateway_job"' not in concrete(gateway[0])
