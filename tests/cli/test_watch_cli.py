"""`latlab watch`: --once exit codes, JSON lines, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from latlab.testing import StubServer

_CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"


def _watch(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", _CLI, "watch", url, "--no-metrics", "--interval", "0.2s",
           "--max-rate", "10", "--max-tokens", "4", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def stub_url():
    with StubServer(ttft_s=0.02, itl_s=0.002) as url:
        yield url


def test_once_holds_exit_0_and_json_lines(stub_url):
    out = _watch(stub_url, "--once", "--window", "1s", "--slo-ttft-ms", "500", "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines and lines[-1]["verdict"]["state"] == "ok"
    assert lines[-1]["server"]["available"] is False  # the stub has no /metrics
    assert "client-side only" in out.stderr


def test_once_breached_exit_1_and_recorded_in_the_run_store(stub_url):
    out = _watch(stub_url, "--once", "--window", "1s", "--slo-ttft-ms", "1", "--name", "canary")
    assert out.returncode == 1
    assert "BREACH" in out.stderr and "TTFT p99" in out.stderr
    assert "recorded run" in out.stderr
    shown = subprocess.run([sys.executable, "-c", _CLI, "runs", "show", "canary"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "(watch)" in shown.stdout and "breach" in shown.stdout


def test_unreachable_once_exit_1_and_says_so():
    out = _watch("http://127.0.0.1:1/v1", "--once")  # a 5 min window: gives up after 3 tries
    assert out.returncode == 1
    assert "unreachable" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "why"),
    [(["--concurrency", "20"], "must not load it"), (["--interval", "soon"], "--interval"),
     (["--max-rate", "1", "--requests-per-cycle", "8"], "above --max-rate"),
     (["--backend", "vllm", "--vllm-version", "x.y"], "--vllm-version")],
)  # fmt: skip
def test_bad_flags_fail_in_one_line(args, why):
    out = _watch("http://127.0.0.1:1/v1", "--once", *args)
    assert out.returncode == 2 and why in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
