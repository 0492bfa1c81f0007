"""/metrics: every name the project agreed on, and the counts move with traffic."""

from __future__ import annotations

import re

import httpx
import pytest

from latlab.errors import ConfigError

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


def test_tpot_histogram_and_http_status_counts(url):
    httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 5})
    httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 1})
    httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "n": 2})  # refused: 400
    text = httpx.get(f"{url}/metrics").text
    # One TPOT sample per request with at least two tokens; a 1-token reply has none.
    assert _value(text, "latlab:request_time_per_output_token_seconds_count") == 1
    ok = 'latlab:http_requests_total{handler="/v1/completions",status="2xx"}'
    bad = 'latlab:http_requests_total{handler="/v1/completions",status="4xx"}'
    assert (_value(text, ok), _value(text, bad)) == (2, 1)
    httpx.get(f"{url}/no/such/path/{'x' * 40}")
    text = httpx.get(f"{url}/metrics").text
    assert _value(text, 'latlab:http_requests_total{handler="other",status="4xx"}') == 1
    assert _value(text, 'latlab:http_requests_total{handler="/metrics",status="2xx"}') >= 1
    assert "x" * 40 not in text  # unknown paths never become label values


def test_custom_bucket_edges_are_exported(engine):
    from latlab.serve.app import create_app
    from latlab.serve.prometheus import HistogramBuckets
    from latlab.serve.server import running_server
    from serve.fake_engine import FakeParams

    buckets = HistogramBuckets(ttft=(0.05, 0.3, 2.0), itl=(0.02, 0.04), request=(1.0, 30.0))
    app = create_app(engine, "b", make_params=FakeParams, buckets=buckets)
    with running_server(app) as base:
        text = httpx.get(f"{base}/metrics").text
    edges = re.findall(r'latlab:time_to_first_token_seconds_bucket\{le="([^"]+)"', text)
    assert edges == ["0.05", "0.3", "2.0", "+Inf"]
    assert 'latlab:request_time_per_output_token_seconds_bucket{le="0.04"' in text
    assert 'latlab:e2e_request_latency_seconds_bucket{le="30.0"' in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.1,0.25,0.5", (0.1, 0.25, 0.5)), (" 0.3 , 1,", (0.3, 1.0)), ("2", (2.0,))],
)
def test_parse_buckets(text, expected):
    from latlab.serve.prometheus import parse_buckets

    assert parse_buckets(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [("0.5,0.25", "increasing"), ("0.1,0.1", "increasing"), ("0,1", "positive"),
     ("-1", "positive"), ("inf", "positive"), ("fast", "separated by commas"), (",", "at least")],
)  # fmt: skip
def test_parse_buckets_rejects(text, why):
    from latlab.serve.prometheus import parse_buckets

    with pytest.raises(ConfigError, match=why):
        parse_buckets(text, "--ttft-buckets")
