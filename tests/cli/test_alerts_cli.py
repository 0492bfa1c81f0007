"""`latlab alerts` and `latlab dashboard` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

_CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"
FIXTURE = Path(__file__).parents[1] / "monitor" / "fixtures" / "vllm-0.32.0.metrics.txt"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CLI, *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_alerts_to_a_file_with_the_rounding_note(tmp_path):
    out = _cli("alerts", "--slo-ttft-ms", "300", "--objective", "99.9%", "-o",
               str(tmp_path / "r.yml"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "note: TTFT threshold 300 ms is not a bucket edge" in out.stderr
    assert "rules (promtool check rules: SUCCESS)" in out.stderr or "not checked" in out.stderr
    assert yaml.safe_load((tmp_path / "r.yml").read_text())["groups"]


def test_alerts_to_stdout_from_a_bench_result(tmp_path):
    result = tmp_path / "run.json"
    result.write_text(json.dumps({"config": {"slo": {"ttft_ms": 500, "tpot_ms": 50,
                                                     "e2e_ms": None}}}))  # fmt: skip
    out = _cli("alerts", "--slo-from", str(result), "--backend", "vllm")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert 'vllm:time_to_first_token_seconds_bucket{le="0.5"}' in text
    assert 'vllm:request_time_per_output_token_seconds_bucket{le="0.05"}' in text


@pytest.mark.parametrize(
    ("args", "why"),
    [(["--slo-ttft-ms", "300", "--windows", "page=5m/1h@2"], "must be shorter"),
     (["--backend", "vllm"], "give at least one SLO"),
     (["--slo-ttft-ms", "9999999"], "above the last bucket edge")],
)  # fmt: skip
def test_alerts_bad_input_is_one_line(args, why):
    out = _cli("alerts", *args)
    assert out.returncode == 2 and why in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def fixture_metrics_url():
    """The recorded vllm serve 0.32.0 /metrics, served over HTTP."""
    body = FIXTURE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()


def test_dashboard_json_on_stdout():
    out = _cli("dashboard", "--backend", "vllm", "--vllm-version", "0.10.2")
    doc = json.loads(out.stdout)
    exprs = " ".join(t["expr"] for p in doc["panels"] for t in p.get("targets", []))
    assert "vllm:kv_cache_usage_perc" in exprs and "vllm:gpu_cache_usage_perc" not in exprs
    assert "vllm:time_per_output_token_seconds_bucket" in exprs


def test_dashboard_check_metrics(fixture_metrics_url, tmp_path):
    ok = _cli("dashboard", "--backend", "vllm", "--check-metrics", fixture_metrics_url)
    assert ok.returncode == 0 and "0 missing series" in ok.stderr
    old = _cli("dashboard", "--backend", "vllm", "--vllm-version", "0.8.0", "-o",
               str(tmp_path / "d.json"), "--check-metrics", fixture_metrics_url)  # fmt: skip
    assert old.returncode == 1
    assert "missing series: KV cache usage: vllm:gpu_cache_usage_perc" in old.stderr
    assert json.loads((tmp_path / "d.json").read_text())["panels"]


def test_dashboard_unknown_version_warns():
    out = _cli("dashboard", "--backend", "vllm", "--vllm-version", "0.99")
    assert out.returncode == 0 and "warning: vLLM 0.99 is newer" in out.stderr


def test_dashboard_gateway_row_checked_against_a_real_gateway(fixture_metrics_url):
    from latlab.gateway.config import GatewayConfig
    from latlab.gateway.server import running_gateway
    from latlab.testing.stub_server import StubServer

    request = {"model": "stub-model", "prompt": "hi", "max_tokens": 2, "temperature": 0}
    with (
        StubServer(ttft_s=0.001, itl_s=0.001) as stub_url,
        running_gateway(GatewayConfig(upstreams=[stub_url])) as (base, _),
    ):
        httpx.post(f"{base}/v1/completions", json=request, trust_env=False).raise_for_status()
        ok = _cli("dashboard", "--check-gateway-metrics", f"{base}/metrics")
    assert ok.returncode == 0 and "0 missing series" in ok.stderr, ok.stderr
    wrong = _cli("dashboard", "--check-gateway-metrics", fixture_metrics_url)  # a vLLM server
    assert wrong.returncode == 1
    assert "missing series: Upstream health: latlab:gateway_upstream_healthy" in wrong.stderr
    doc = json.loads(_cli("dashboard", "--gateway").stdout)
    assert doc["panels"][-1]["targets"][0]["expr"].count("$gateway_job") == 1


def test_alerts_with_a_gateway_job(tmp_path):
    out = _cli("alerts", "--slo-ttft-ms", "500", "--gateway-job", "latlab-gateway", "-o",
               str(tmp_path / "r.yml"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    groups = yaml.safe_load((tmp_path / "r.yml").read_text())["groups"]
    assert groups[-1]["name"] == "latlab-latlab-gateway" and len(groups[-1]["rules"]) == 7
    bad = _cli("alerts", "--slo-ttft-ms", "500", "--gateway-job", "g", "--gateway-lag-ms", "-1")
    assert bad.returncode == 2 and "--gateway-lag-ms must be above 0" in bad.stderr
