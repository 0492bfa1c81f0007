"""The anchor scripts' pure parts: vLLM's KV log line, the shim's entry point, and how
client_accuracy reads each tool's output and nets out start-up CPU. No vLLM or aiperf needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .scripts import BENCH, load_script

sys.path.insert(0, str(BENCH / "anchors"))
shim = load_script("vllm_shim", BENCH / "anchors" / "vllm_shim.py")
offline = load_script("vllm_offline", BENCH / "anchors" / "vllm_offline.py")
ca = load_script("client_accuracy", BENCH / "client_accuracy.py")

# The line vLLM CPU 0.32 logged here for the reference model with VLLM_CPU_KVCACHE_SPACE=1.
KV_LINE = (
    "(EngineCore pid=8743) INFO 11-25 18:49:28 [kv_cache_utils.py:2327] CPU KV cache size: "
    "58,240 tokens, Maximum concurrency for 2,048 tokens per request: 28.44x\n"
)


def test_kv_log_parsed_and_blocks_derived_from_tokens() -> None:
    got = offline.parse_kv_log("noise\n" + KV_LINE, block_size=128)
    assert got["kv_cache_tokens"] == 58_240
    assert got["kv_cache_blocks"] == 455  # 58,240 / 128
    assert got["max_concurrency"] == {"tokens_per_request": 2048, "x": 28.44}
    # 12 layers x 2 x 6 KV heads x 64 dims x 2 bytes = 18,432 B/token; 1 GiB floors to 455 blocks
    assert got["kv_cache_blocks"] == (2**30 // (18_432 * 128))


def test_kv_log_engine_block_count_wins_and_last_line_counts() -> None:
    text = KV_LINE.replace("58,240", "1,024") + KV_LINE
    got = offline.parse_kv_log(text, block_size=128, blocks=456)
    assert got["kv_cache_tokens"] == 58_240
    assert got["kv_cache_blocks"] == 456


def test_kv_log_without_the_line() -> None:
    got = offline.parse_kv_log("nothing here", block_size=16)
    assert got == {"block_size": 16, "kv_cache_blocks": None}


def test_distinct_prompts_are_distinct_and_in_vocab() -> None:
    prompts = offline.distinct_prompts(64, 6, vocab=4096)
    assert len(prompts) == 64
    assert all(len(p) == 6 for p in prompts)
    assert len({tuple(p) for p in prompts}) == 64
    assert all(10 <= t < 4096 for p in prompts for t in p)


def test_anchor_shim_is_the_shipped_one() -> None:
    # benchmarks/anchors/vllm_shim.py loads src/latlab/deploy/vllm_cpu_shim.py by path.
    from latlab.deploy import vllm_cpu_shim

    assert shim.patch_metadata.__code__.co_code == vllm_cpu_shim.patch_metadata.__code__.co_code
    assert shim.main.__doc__ == vllm_cpu_shim.main.__doc__


def test_percentile_matches_hand_computed() -> None:
    assert ca.percentile([], 50) is None
    assert ca.percentile([7.0], 99) == 7.0
    assert ca.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert ca.percentile([0.0, 10.0], 99) == pytest.approx(9.9)


def test_request_counts_override_defaults() -> None:
    assert ca.parse_requests(None, [1, 64]) == {1: 30, 64: 256}
    assert ca.parse_requests("64=10", [1, 64, 8]) == {1: 30, 64: 10, 8: 32}


def test_parsers_read_each_tools_output(tmp_path: Path) -> None:
    latlab = tmp_path / "l.json"
    summary = {"ttft_ms": {"p50": 51.0, "p99": 55.0}, "itl_ms": {"p50": 10.1}, "completed": 30}
    client = {"cpu_s_per_1k_tokens": 0.01, "cpu_util": 0.1, "client_bound": False, "reasons": []}
    latlab.write_text(json.dumps({"levels": [{"summary": summary, "client": client}]}))
    run = ca.ToolRun("latlab", 1, 30, ok=False)
    ca.parse_latlab(latlab, run)
    assert (run.ttft_p50, run.ttft_p99, run.itl_p50, run.completed) == (51.0, 55.0, 10.1, 30)
    assert run.loop_cpu_s_per_1k_tokens == 0.01

    vllm = tmp_path / "v.json"
    vllm.write_text(json.dumps({"median_ttft_ms": 52.0, "p99_ttft_ms": 60.0,
                                "median_itl_ms": 10.2, "completed": 29}))  # fmt: skip
    run = ca.ToolRun("vllm", 1, 30, ok=False)
    ca.parse_vllm(vllm, run)
    assert (run.ttft_p50, run.ttft_p99, run.itl_p50, run.completed) == (52.0, 60.0, 10.2, 29)

    aiperf = tmp_path / "a"
    aiperf.mkdir()
    (aiperf / "profile_export_aiperf.json").write_text(json.dumps({
        "time_to_first_token": {"p50": 53.0, "p99": 70.0},
        "inter_token_latency": {"p50": 9.9},
        "inter_chunk_latency": {"p50": 10.0},
        "request_count": {"avg": 30.0},
    }))  # fmt: skip
    run = ca.ToolRun("aiperf", 1, 30, ok=False)
    ca.parse_aiperf(aiperf, run)
    assert (run.ttft_p50, run.ttft_p99, run.itl_p50, run.completed) == (53.0, 70.0, 9.9, 30)
    assert run.extra == {"inter_chunk_latency_p50": 10.0}


def test_net_cpu_subtracts_startup_run() -> None:
    base = ca.ToolRun("latlab", 1, 1, ok=True, completed=1, cpu_s=3.0)
    run = ca.ToolRun("latlab", 64, 256, ok=True, completed=256, cpu_s=3.51)
    ca.net_cpu(run, base)
    # (3.51 - 3.0) CPU s over (256 - 1) x 64 tokens
    assert run.net_cpu_s_per_1k_tokens == pytest.approx(0.51 / (255 * 64) * 1000)
    failed = ca.ToolRun("latlab", 1, 1, ok=False)
    run2 = ca.ToolRun("latlab", 64, 256, ok=True, completed=256, cpu_s=3.51)
    ca.net_cpu(run2, failed)
    assert run2.net_cpu_s_per_1k_tokens is None


def test_medians_and_goal_per_level() -> None:
    runs = [
        ca.ToolRun("latlab", 256, 768, ok=True, ttft_p50=t, server_first_chunk_p50=50.0)
        for t in (53.0, 73.0, 52.0)
    ]
    runs.append(ca.ToolRun("vllm", 256, 768, ok=False, note="exit 1"))
    rows = {(r["tool"], r["concurrency"]): r for r in ca.medians(runs)}
    lat = rows[("latlab", 256)]
    assert lat["ttft_p50"] == 53.0 and lat["ttft_excess_ms"] == 3.0
    assert lat["goal_ms"] == 10.0 and lat["meets_goal"] is True
    assert rows[("vllm", 256)]["ttft_p50"] is None  # a failed run contributes nothing
