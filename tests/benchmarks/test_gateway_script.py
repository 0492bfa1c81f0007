"""benchmarks/gateway.py's workload builders and Prometheus parsing (the figures' inputs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gateway.py"
spec = importlib.util.spec_from_file_location("gateway_bench", SCRIPT)
gw = importlib.util.module_from_spec(spec)
sys.modules["gateway_bench"] = gw
spec.loader.exec_module(gw)


def test_repeats_dataset_repeats_exactly_the_share_asked_and_only_earlier_prompts(tmp_path):
    path = tmp_path / "r.jsonl"
    repeats = gw.repeats_dataset(path, 80, 0.25, seed=1)
    prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines()]
    assert repeats == 20 and len(prompts) == 80 and len(set(prompts)) == 60
    first = {p: prompts.index(p) for p in set(prompts)}
    assert all(first[p] <= i for i, p in enumerate(prompts))


def test_prefix_dataset_groups_and_hot_share(tmp_path):
    even, hot = tmp_path / "even.jsonl", tmp_path / "hot.jsonl"
    gw.prefix_dataset(even, 96, 8, None, seed=3)
    gw.prefix_dataset(hot, 400, 8, 0.8, seed=3)
    heads = [json.loads(x)["prompt"].split("]")[0] for x in even.read_text().splitlines()]
    assert set(Counter(heads).values()) == {12}
    hot_heads = Counter(json.loads(x)["prompt"].split("]")[0] for x in hot.read_text().splitlines())
    assert 0.72 < hot_heads.most_common(1)[0][1] / 400 < 0.88


def test_metric_sums_the_matching_samples():
    text = (
        "# HELP x\nlatlab:prefix_cache_hits_total 3.0\n"
        'latlab:gateway_upstream_requests_total{upstream="a",outcome="http_200"} 4.0\n'
        'latlab:gateway_upstream_requests_total{upstream="a",outcome="connect_error"} 1.0\n'
        'latlab:gateway_upstream_requests_total{upstream="b",outcome="http_200"} 2.0\n'
    )
    assert gw.metric(text, "latlab:prefix_cache_hits") == 0.0  # a different name
    assert gw.metric(text, "latlab:prefix_cache_hits_total") == 3.0
    assert gw.metric(text, "latlab:gateway_upstream_requests_total", 'upstream="a"') == 5.0
