"""/metrics: every name the project agreed on, and the counts move with traffic."""

from __future__ import annotations

import re

import httpx

REQUIRED = [
    "latlab:time_to_first_token_seconds",
    "latlab:inter_token_latency_seconds",
    "latlab:e2e_request_latency_seconds",
    "latlab:request_queue_time_seconds",
    "latlab:num_requests_running",
    "latlab:num_requests_waiting",
    "latlab:kv_cache_usage_perc",
    "latlab:prefix_cache_queries",
    "latlab:prefix_cache_hits",
    "latlab:prompt_tokens",
    "latlab:generation_tokens",
]


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not found"
    return float(match.group(1))


def test_metrics_names_and_counts(url):
    before = httpx.get(f"{url}/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    for name in REQUIRED:
        assert f"# TYPE {name}" in before.text, name
    assert _value(before.text, "latlab:generation_tokens_total") == 0

    httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 5})
    body = {"prompt": "hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
        r.read()

    text = httpx.get(f"{url}/metrics").text
    assert _value(text, "latlab:generation_tokens_total") == 8
    assert _value(text, "latlab:prompt_tokens_total") == 5
    assert _value(text, "latlab:time_to_first_token_seconds_count") == 2
    assert _value(text, "latlab:e2e_request_latency_seconds_count") == 2
    assert _value(text, "latlab:request_queue_time_seconds_count") == 2
    # 4 + 2 gaps between the 5 and 3 tokens.
    assert _value(text, "latlab:inter_token_latency_seconds_count") == 6
    assert _value(text, "latlab:num_requests_running") == 0
    assert _value(text, "latlab:kv_cache_usage_perc") == 0
    assert 'model_name="fake-model"' in text
    assert _value(text, "latlab:num_preemptions_total") == 0
    success = 'latlab:request_success_total{finished_reason="length",model_name="fake-model"}'
    assert _value(text, success) == 2


def test_each_app_has_its_own_registry(engine):
    from latlab.serve.app import create_app
    from serve.fake_engine import FakeParams

    first = create_app(engine, "a", make_params=FakeParams)
    second = create_app(engine, "b", make_params=FakeParams)
    assert first.state.latlab.metrics.registry is not second.state.latlab.metrics.registry
