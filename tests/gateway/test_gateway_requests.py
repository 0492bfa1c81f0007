"""Validation, keys and limits, and upstream faults."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from serve.fake_engine import MODEL, FakeEngine, FakeParams

from gateway.conftest import gateway
from gateway.helpers import body, post, root
from latlab.gateway.keys import hash_key
from latlab.procs import free_port
from latlab.serve.app import create_app
from latlab.serve.server import running_server
from latlab.testing.stub_server import StubServer

MALFORMED = [
    b"{not json",
    json.dumps({"model": MODEL, "prompt": "x", "max_tokens": "5"}).encode(),
    json.dumps({"model": MODEL, "prompt": "x", "temperature": -1}).encode(),
    json.dumps({"model": MODEL}).encode(),
    json.dumps({"model": MODEL, "prompt": "x", "stream": "yes"}).encode(),
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_requests_get_latlab_serves_400_and_are_never_forwarded(raw):
    with (
        StubServer(model=MODEL) as stub_url,
        running_server(create_app(FakeEngine(), MODEL, make_params=FakeParams)) as serve_url,
        gateway(upstreams=[stub_url], cache="off") as (gw_url, _),
    ):
        headers = {"content-type": "application/json"}
        serve = httpx.post(serve_url + "/v1/completions", content=raw, headers=headers)
        through = httpx.post(gw_url + "/v1/completions", content=raw, headers=headers)
        requests = httpx.get(root(stub_url) + "/stub/stats").json()["requests"]
    assert serve.status_code == through.status_code == 400
    assert through.json() == serve.json()
    assert requests == 0


@pytest.fixture(scope="module")
def keyed(stub, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    keys = folder / "keys.yaml"
    keys.write_text(
        "keys:\n"
        f"  - {{sha256: {hash_key('key-a')}, tenant: a}}\n"
        f"  - {{sha256: {hash_key('key-b')}, tenant: b}}\n"
        f"  - {{sha256: {hash_key('key-slow')}, tenant: slow, requests_per_minute: 3}}\n"
    )
    with gateway(upstreams=[stub.url], cache=f"sqlite:{folder / 'c.sqlite'}",
                 api_keys=str(keys)) as (url, g):  # fmt: skip
        yield url, g


def test_a_valid_key_is_required(keyed):
    url, _ = keyed
    missing = post(url, body("who"))
    wrong = post(url, body("who"), authorization="Bearer nope")
    assert missing.status == wrong.status == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert post(url, body("who"), authorization="Bearer key-a").status == 200
    models = httpx.get(url + "/v1/models", trust_env=False)
    assert models.status_code == 401


def test_tenants_never_share_cache_entries(keyed):
    url, _ = keyed
    a1 = post(url, body("private"), authorization="Bearer key-a")
    b1 = post(url, body("private"), authorization="Bearer key-b")
    a2 = post(url, body("private"), authorization="Bearer key-a")
    assert (a1.cache, b1.cache, a2.cache) == ("miss", "miss", "hit")


def test_over_the_limit_is_429_with_retry_after(keyed):
    url, _g = keyed
    statuses = [post(url, body(f"limited {i}"), authorization="Bearer key-slow") for i in range(4)]
    assert [r.status for r in statuses] == [200, 200, 200, 429]
    refused = statuses[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 20  # one request every 20 s
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    text = httpx.get(url + "/metrics", trust_env=False).text
    assert 'latlab:gateway_rate_limited_total{limit="requests"} 1.0' in text
    assert "latlab:gateway_auth_failures_total" in text


def test_upstream_down_is_a_502_that_says_why():
    dead = f"http://127.0.0.1:{free_port()}"
    with gateway(upstreams=[dead], cache="off", eject_after=100) as (url, _):
        reply = post(url, body("anyone there"))
    assert reply.status == 502
    assert dead in reply.json()["error"]["message"]
    assert "connect_error" in reply.json()["error"]["message"]


def test_no_healthy_upstream_is_a_503():
    dead = f"http://127.0.0.1:{free_port()}"
    with gateway(upstreams=[dead], cache="off", eject_after=1) as (url, _):
        reply = post(url, body("anyone there"))
        health = httpx.get(url + "/health", trust_env=False)
    assert reply.status == 503 and reply.json()["error"]["code"] == "no_healthy_upstream"
    assert health.status_code == 503


def test_a_failure_before_the_first_byte_is_retried_on_another_upstream(stub):
    dead = f"http://127.0.0.1:{free_port()}"
    with gateway(upstreams=[dead, stub.url], cache="off", route="round-robin",
                 eject_after=100) as (url, _):  # fmt: skip
        replies = [post(url, body(f"retry {i}", temperature=0.5)) for i in range(4)]
        text = httpx.get(url + "/metrics", trust_env=False).text
    assert [r.status for r in replies] == [200] * 4
    assert {r.headers["x-latlab-upstream"] for r in replies} == {root(stub.url)}
    assert "latlab:gateway_retries_total 4.0" in text  # round-robin tried the dead one first


def test_a_reset_mid_stream_ends_with_an_error_event_and_is_not_cached(tmp_path):
    with (
        StubServer(ttft_s=0.01, itl_s=0.002, fault="reset", fault_after_chunks=2) as bad,
        gateway(upstreams=[bad], cache=f"sqlite:{tmp_path / 'c.sqlite'}") as (url, _),
    ):
        first = post(url, body("cut short"))
        second = post(url, body("cut short"))
    assert first.status == 200
    assert len(first.events) == 2 + 2  # two whole chunks, the error event, [DONE]
    error = json.loads(first.events[-2][len(b"data: ") :])["error"]
    assert error["code"] == "upstream_disconnected" and "connection_reset" in error["message"]
    assert second.cache == "miss"  # nothing partial was cached


def test_an_upstream_is_ejected_and_readmitted(stub):
    port = free_port()
    flaky = StubServer(ttft_s=0.01, itl_s=0.002, port=port)
    flaky.start()
    with gateway(upstreams=[flaky.url, stub.url], cache="off", health_interval_s=0.1,
                 eject_after=2) as (url, g):  # fmt: skip
        up = next(u for u in g.upstreams.all if u.port == port)
        flaky.stop()
        _wait(lambda: not up.healthy)
        statuses = {post(url, body(f"ejected {i}", temperature=0.5)).status for i in range(4)}
        flaky = StubServer(ttft_s=0.01, itl_s=0.002, port=port)
        flaky.start()
        _wait(lambda: up.healthy)
        flaky.stop()
    assert statuses == {200}


def _wait(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_models_are_merged_and_requests_go_to_an_upstream_serving_the_model():
    with (
        StubServer(model="alpha") as a,
        StubServer(model="beta") as b,
        gateway(upstreams=[a, b], cache="off") as (url, _),
    ):
        models = httpx.get(url + "/v1/models", trust_env=False).json()
        to_b = [post(url, body(f"b {i}", model="beta")) for i in range(3)]
        unknown = post(url, body("?", model="gamma"))
    assert sorted(m["id"] for m in models["data"]) == ["alpha", "beta"]
    assert {r.headers["x-latlab-upstream"] for r in to_b} == {root(b)}
    assert unknown.status == 400 and unknown.json()["error"]["code"] == "model_not_found"


def test_the_gateway_applies_latlab_serves_guard(stub):
    with gateway(upstreams=[stub.url], cache="off") as (url, _):
        payload = json.dumps(body("guarded")).encode()
        evil_host = httpx.post(url + "/v1/completions", content=payload, trust_env=False,
                               headers={"content-type": "application/json",
                                        "host": "evil.example"})  # fmt: skip
        evil_origin = httpx.post(url + "/v1/completions", content=payload, trust_env=False,
                                 headers={"content-type": "application/json",
                                          "origin": "https://evil.example"})  # fmt: skip
        form = httpx.post(url + "/v1/completions", content=payload, trust_env=False,
                          headers={"content-type": "text/plain"})  # fmt: skip
    assert evil_host.status_code == 403 and evil_host.json()["error"]["code"] == "host_not_allowed"
    assert evil_origin.status_code == 403
    assert form.status_code == 415


def test_a_whole_response_cut_short_is_a_502_never_a_truncated_200():
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_badly() -> None:  # /v1/models for the health check, then a body cut short
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            request = conn.recv(65536)
            if request.startswith(b"GET"):
                models = b'{"data":[{"id":"stub-model"}]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(models), models))  # fmt: skip
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b'Content-Length: 500\r\n\r\n{"choices": [')  # fmt: skip
            conn.close()

    threading.Thread(target=serve_badly, daemon=True).start()
    try:
        with gateway(upstreams=[f"http://127.0.0.1:{port}"], cache="off", eject_after=100,
                     health_interval_s=30) as (url, _):  # fmt: skip
            reply = post(url, body("whole", stream=False, stream_options=None))
    finally:
        listener.close()
    assert reply.status == 502
    assert "broke off" in reply.json()["error"]["message"]
