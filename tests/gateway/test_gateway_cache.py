"""The gateway in front of the stub: pass-through, cache hits, bypass rules, replay."""

from __future__ import annotations

import time

import httpx
import pytest

from gateway.conftest import gateway
from gateway.helpers import body, post, root


@pytest.fixture(scope="module")
def gw(stub, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gw") / "cache.sqlite"
    with gateway(upstreams=[stub.url], cache=f"sqlite:{cache}") as (url, g):
        yield url, g


def test_stream_passes_through_unchanged(stub, gw):
    url, _ = gw
    direct = post(root(stub.url), body("pass through", temperature=0.5))
    through = post(url, body("pass through", temperature=0.5))
    assert through.status == 200 and through.cache == "bypass"
    assert through.events == direct.events
    assert through.headers["content-type"].startswith("text/event-stream")
    assert through.headers["x-latlab-upstream"] == root(stub.url)


def test_a_repeat_is_a_hit_with_the_same_events_and_usage(stub, gw):
    url, _ = gw
    before = stub.stats()["requests"]
    first = post(url, body("cache me"))
    second = post(url, body("cache me"))
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.events == first.events  # same boundaries, same usage chunk, same [DONE]
    assert b'"usage":{' in second.events[-2]
    assert stub.stats()["requests"] == before + 1


def test_non_streamed_responses_are_cached_too(stub, gw):
    url, _ = gw
    first = post(url, body("whole body", stream=False, stream_options=None))
    second = post(url, body("whole body", stream=False, stream_options=None))
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.json() == first.json() and second.headers["content-type"] == "application/json"


def test_sampled_and_no_store_requests_are_never_cached(stub, gw):
    url, _ = gw
    before = stub.stats()["requests"]
    labels = [post(url, body("sampled", temperature=0.8)).cache for _ in range(2)]
    labels += [post(url, body("no store"), cache_control="no-store").cache for _ in range(2)]
    assert labels == ["bypass"] * 4
    assert stub.stats()["requests"] == before + 4


def test_no_cache_fetches_fresh_and_stores_it(gw):
    url, _ = gw
    assert post(url, body("fresh"), cache_control="no-cache").cache == "bypass"
    assert post(url, body("fresh")).cache == "hit"


def test_seeded_requests_are_cached(gw):
    url, _ = gw
    labels = [post(url, body("seeded", temperature=0.9, seed=3)).cache for _ in range(2)]
    assert labels == ["miss", "hit"]


def test_paced_replay_keeps_the_recorded_timing(gw):
    url, _ = gw
    payload = body("paced replay", max_tokens=20)  # stub: 20 ms + 19 x 5 ms = about 115 ms
    post(url, payload)
    t0 = time.perf_counter()
    fast = post(url, payload)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    paced = post(url, payload, x_latlab_cache_replay="paced")
    paced_s = time.perf_counter() - t0
    assert fast.cache == paced.cache == "hit" and paced.events == fast.events
    assert paced_s >= 0.1 and paced_s > fast_s


def test_trimming_is_applied_and_reported(stub, gw):
    url, _ = gw
    long_prompt = "word " * 400
    reply = post(url, body(long_prompt, temperature=0.7), x_latlab_trim_to="16")
    assert reply.status == 200
    removed = int(reply.headers["x-latlab-trimmed-tokens"])
    assert removed > 0 and reply.headers["x-latlab-token-count"].startswith("estimate")
    usage = next(e for e in reply.events if b'"usage":{' in e)
    # The stub counts the words it was sent: the last 16 x 4 characters are 13 words.
    assert b'"prompt_tokens":13' in usage
    bad = post(url, body("x"), x_latlab_trim_to="lots")
    assert bad.status == 400 and "x-latlab-trim-to" in bad.json()["error"]["message"]


def test_metrics_name_every_gateway_figure(gw):
    url, _ = gw
    for _ in range(2):  # a miss and a hit of its own: the test does not rely on its neighbours
        assert post(url, body("metrics probe")).status == 200
    text = httpx.get(url + "/metrics", trust_env=False).text
    names = ("latlab:gateway_cache_requests_total", "latlab:gateway_requests_total",
             "latlab:gateway_time_to_first_token_seconds_bucket",
             "latlab:gateway_upstream_latency_seconds_bucket",
             "latlab:gateway_upstream_outstanding_requests", "latlab:gateway_upstream_healthy",
             "latlab:gateway_cache_available 1.0",
             "latlab:gateway_trimmed_tokens_total")  # fmt: skip
    for name in names:
        assert name in text, name
    assert 'latlab:gateway_cache_requests_total{result="hit"}' in text


def test_models_and_health(gw):
    url, _ = gw
    models = httpx.get(url + "/v1/models", trust_env=False).json()
    assert [m["id"] for m in models["data"]] == ["stub-model"]
    health = httpx.get(url + "/health", trust_env=False)
    assert health.status_code == 200 and all(
        u["healthy"] for u in health.json()["upstreams"].values()
    )
