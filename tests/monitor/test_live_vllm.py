"""The vLLM side on real parts: a real ``vllm serve`` (CPU build), scraped by Prometheus.

The dashboard for the installed vLLM version resolves panel by panel, ``latlab alerts
--metrics-url`` reads vLLM's live bucket edges and its rules evaluate on that Prometheus, and
``latlab watch`` reads vLLM's /metrics by name. Skipped where vLLM's venv is absent (see
benchmarks/anchors/install.sh); starting vLLM takes 30 s on a quiet machine.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from latlab.monitor.dashboard import build_dashboard, concrete
from latlab.monitor.generate import RuleOptions, generate_rules
from latlab.monitor.names import resolve
from latlab.procs import ManagedProcess, ProcessSpec, free_port
from latlab.testing.prometheus import PrometheusServer
from latlab.watch.config import WatchConfig
from latlab.watch.loop import run_watch
from monitor.helpers import needs_prometheus

REPO = Path(__file__).parents[2]
VLLM_PYTHON = Path(os.environ.get("LATLAB_VLLM_PYTHON", "/tmp/vllm-venv/bin/python"))
no_vllm = pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM at {VLLM_PYTHON}")
pytestmark = [needs_prometheus, pytest.mark.slow, no_vllm]


def _complete(base: str, i: int) -> None:
    body = json.dumps({"model": "tiny", "prompt": f"probe {i}", "max_tokens": 6,
                       "stream": True}).encode()  # fmt: skip
    req = urllib.request.Request(f"{base}/v1/completions", body,
                                 {"Content-Type": "application/json"})  # fmt: skip
    urllib.request.urlopen(req, timeout=120).read()


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    tmp, port = tmp_path_factory.mktemp("vllm"), free_port()
    spec = ProcessSpec(
        argv=[str(VLLM_PYTHON), str(REPO / "benchmarks/anchors/vllm_shim.py"), "serve",
              str(REPO / "src/latlab/assets/tiny-llama"), "--host", "127.0.0.1", "--port",
              str(port), "--served-model-name", "tiny", "--max-model-len", "512"],
        env={"VLLM_CPU_KVCACHE_SPACE": "1"}, name="vllm", log_path=tmp / "vllm.log",
    )  # fmt: skip
    with ManagedProcess(spec) as proc:
        base = f"http://127.0.0.1:{port}"
        proc.wait_http(f"{base}/health", timeout_s=900)
        for i in range(3):
            _complete(base, i)
        version = json.loads(urllib.request.urlopen(f"{base}/version").read())["version"]
        yield base, version, tmp


def test_dashboard_alerts_and_watch_on_a_live_vllm(vllm):
    base, version, tmp = vllm
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
            _complete(base, 10 + i)
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
