"""`latlab bench --url` through the gateway: each record carries x-latlab-cache, and hit and
miss latencies are summarized apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.conftest import gateway
from latlab.bench import BenchConfig, OpenAITarget, run_bench


def _dataset(tmp_path: Path) -> Path:
    prompts = [f"question number {i}" for i in range(6)]
    lines = [{"prompt": p, "output_len": 8} for p in prompts + prompts[:2]]  # 2 of 8 repeat
    path = tmp_path / "repeats.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.mark.parametrize("transport", ["raw", "httpx"])
def test_each_record_carries_the_cache_outcome(stub, tmp_path, transport):
    # Unsalted: the dataset's repeats are the point (a per-request salt would make them unique).
    config = BenchConfig(concurrency=[1], num_requests=8, warmup=0, salt="",
                         dataset=f"jsonl:{_dataset(tmp_path)}")  # fmt: skip
    with gateway(upstreams=[stub.url], cache=f"sqlite:{tmp_path / 'c.sqlite'}") as (url, _):
        target = OpenAITarget(url + "/v1", transport=transport)
        level = run_bench(config, target, progress=False).levels[0]
    assert [r.gateway_cache for r in level.records] == ["miss"] * 6 + ["hit"] * 2
    assert (
        level.by_gateway_cache["hit"].completed == 2
        and level.by_gateway_cache["miss"].completed == 6
    )
    assert level.by_gateway_cache["hit"].ttft_ms.p50 < level.by_gateway_cache["miss"].ttft_ms.p50


def test_without_a_gateway_records_have_no_cache_outcome(stub):
    config = BenchConfig(concurrency=[1], num_requests=2, warmup=0, input_len="4",
                         output_len="4")  # fmt: skip
    level = run_bench(config, OpenAITarget(stub.url), progress=False).levels[0]
    assert {r.gateway_cache for r in level.records} == {None} and level.by_gateway_cache == {}
    assert "by_gateway_cache" not in level.to_dict(with_records=False)


@pytest.mark.slow
def test_bench_cli_table_and_json_report_hits_apart(stub, tmp_path):
    out = tmp_path / "run.json"
    latlab = str(Path(sys.executable).parent / "latlab")
    with gateway(upstreams=[stub.url], cache=f"sqlite:{tmp_path / 'c.sqlite'}") as (url, _):
        cmd = [latlab, "bench", "--url", url + "/v1", "--dataset", f"jsonl:{_dataset(tmp_path)}",
               "--num-requests", "8", "--concurrency", "1", "--warmup", "0", "--json", str(out),
               "--no-progress", "--no-salt"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    level = json.loads(out.read_text())["levels"][0]
    assert [r["gateway_cache"] for r in level["records"]] == ["miss"] * 6 + ["hit"] * 2
    assert level["by_gateway_cache"]["hit"]["completed"] == 2
    assert "gateway hit" in done.stdout and "gateway miss" in done.stdout
