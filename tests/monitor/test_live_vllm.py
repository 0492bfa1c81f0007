"""The vLLM side on real parts: a real ``vllm serve`` (CPU build), scraped by Prometheus.

The dashboard for the installed vLLM version resolves panel by panel, ``latlab alerts
--metrics-url`` reads vLLM's live bucket edges and its rules evaluate on that Prometheus, and
``latlab watch`` reads vLLM's /metrics by name. It uses the session's one vLLM launch
(``vllm_server``, tests/conftest.py): skipped without vLLM, except under ``make test``.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from latlab.monitor.dashboard import build_dashboard, concrete
from latlab.monitor.generate import RuleOptions, generate_rules
from latlab.monitor.names import resolve
from latlab.testing.prometheus import PrometheusServer
from latlab.watch.config import WatchConfig
from latlab.watch.loop import run_watch
from monitor.helpers import needs_prometheus

pytestmark = [needs_prometheus, pytest.mark.slow]


def _complete(base: str, model: str, i: int) -> None:
    body = json.dumps({"model": model, "prompt": f"probe {i}", "max_tokens": 6,
                       "stream": True}).encode()  # fmt: skip
    req = urllib.request.Request(f"{base}/v1/completions", body,
                                 {"Content-Type": "application/json"})  # fmt: skip
    urllib.request.urlopen(req, timeout=120).read()


@pytest.fixture(scope="module")
def vllm(vllm_server, tmp_path_factory):
    base = vllm_server.base_url
    for i in range(3):
        _complete(base, vllm_server.model, i)
    version = json.loads(urllib.request.urlopen(f"{base}/version").read())["version"]
    return base, vllm_server.model, version, tmp_path_factory.mktemp("vllm-monitor")


def test_dashboard_alerts_and_watch_on_a_live_vllm(vllm):
    base, model, version, tmp = vllm
    names = resolve("vllm", version).names
    rules = tmp / "rules.yml"
    out = generate_rules(RuleOptions(ttft_ms=250, tpot_ms=50, backend="vllm",
                                     vllm_version=version, job="vllm",
                                     metrics_url=f"{base}/metrics", windows="page=20s/4s@14.4"),
                         str(rules))  # fmt: skip
    assert "SUCCESS" in out.summary and out.notes == []  # 250 and 50 ms are vLLM edges
    host = base.removeprefix("http://")
    with PrometheusServer(tmp, jobs={"vllm": [host]}, rule_files=(rules,)) as prom:
        prom.wait_until(lambda api: api.query('up{job="vllm"} == 1'), timeout_s=60, what="up")
        for i in range(6):
            _complete(base, model, 10 + i)
        prom.wait_until(lambda api: api.query('slo:sli_error:ratio_rate4s{slo="ttft"}'),
                        timeout_s=60, what="the TTFT SLI on vLLM's histogram")  # fmt: skip
        empty = [f"{p.title}: {q.expr}" for p in build_dashboard(names).panels
                 if p.requires is None for q in p.queries
                 if not prom.api.query(concrete(q.expr, rate_interval="30s"))]  # fmt: skip
        assert not empty, "\n".join(empty)
    config = WatchConfig(url=f"{base}/v1", interval_s=0.5, window_s=30, max_rate=4,
                         max_tokens="4", metrics_port=None, duration_s=2.0)  # fmt: skip
    result = run_watch(config, backend="vllm", vllm_version=version)
    assert result.verdict.state == "ok", result.verdict.reasons
