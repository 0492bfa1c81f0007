"""The Grafana dashboard: every core panel resolves on a real server's /metrics, by version."""

import json

import pytest

from latlab.monitor.dashboard import build_dashboard, check_against_scrape, concrete
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
