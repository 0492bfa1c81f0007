"""The guard through the real app under uvicorn: keys, Host/Origin, content type, limits, timeouts.

Every refusal is an OpenAI-style JSON body and closes the connection; the server keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import time

import httpx
import pytest
from raw_http import connect, read_to_close

from latlab.errors import ConfigError
from latlab.serve import connections
from latlab.serve.app import create_app
from latlab.serve.guard import (
    Drain,
    GuardConfig,
    RequestLimits,
    check_shape,
    host_name,
    json_depth_exceeds,
    read_api_keys,
)
from latlab.serve.server import running_server
from serve.fake_engine import MODEL, FakeEngine, FakeParams

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
HELLO = {"prompt": "hi", "max_tokens": 2}
LOOPBACK = GuardConfig.hosts_for_bind("127.0.0.1")


@contextlib.contextmanager
def guarded(drain: Drain | None = None, **guard_fields):
    guard_fields.setdefault("allowed_hosts", LOOPBACK)
    guard = GuardConfig(**guard_fields)
    app = create_app(FakeEngine(), MODEL, make_params=FakeParams, guard=guard, drain=drain)
    with running_server(app, guard=guard) as url:
        yield url


def _assert_refused(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert r.headers["connection"] == "close"
    return error


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# team keys\nsecond-key\n\n")
    with guarded(api_keys=("first-key", *read_api_keys(key_file))) as url:
        yield url


def test_missing_api_key_is_401(keyed):
    error = _assert_refused(httpx.post(keyed + COMPLETIONS, json=HELLO), 401, "invalid_api_key")
    assert "Authorization: Bearer" in error["message"]


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic first-key", "Bearer", "first-key"])
def test_wrong_api_key_is_401(keyed, header):
    r = httpx.post(keyed + COMPLETIONS, json=HELLO, headers={"Authorization": header})
    _assert_refused(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["first-key", "second-key"])
def test_each_configured_key_is_accepted(keyed, key):
    r = httpx.post(keyed + COMPLETIONS, json=HELLO, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    models = httpx.get(keyed + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert models.status_code == 200


def test_models_need_the_key_but_health_and_metrics_do_not(keyed):
    assert httpx.get(keyed + "/v1/models").status_code == 401
    assert httpx.get(keyed + "/health").status_code == 200
    assert httpx.get(keyed + "/metrics").status_code == 200


def test_api_key_file_without_keys_is_a_config_error(tmp_path):
    empty = tmp_path / "keys.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        read_api_keys(empty)
    with pytest.raises(ConfigError, match="cannot read"):
        read_api_keys(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="non-empty"):
        GuardConfig(api_keys=("",))


@pytest.fixture(scope="module")
def local():
    with guarded() as url:
        yield url


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "192.168.1.5", "10.0.0.1"])
def test_foreign_host_is_refused_on_a_loopback_server(local, host):
    # DNS rebinding: a page at evil.example resolves its name to 127.0.0.1 and calls us.
    r = httpx.post(local + COMPLETIONS, json=HELLO, headers={"Host": host})
    error = _assert_refused(r, 403, "host_not_allowed")
    assert "--allowed-hosts" in error["message"]


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1:9", "[::1]:8000"])
def test_loopback_names_are_accepted(local, host):
    r = httpx.post(local + COMPLETIONS, json=HELLO, headers={"Host": host})
    assert r.status_code == 200, r.text


def test_allowed_hosts_accepts_listed_names_and_subdomains():
    with guarded(allowed_hosts=("api.example", "*.internal")) as url:
        for host in ("api.example", "a.b.internal:80"):
            r = httpx.post(url + COMPLETIONS, json=HELLO, headers={"Host": host})
            assert r.status_code == 200, host
        r = httpx.post(url + COMPLETIONS, json=HELLO, headers={"Host": "localhost"})
        assert r.status_code == 403


def test_non_loopback_bind_accepts_any_host_by_default():
    assert GuardConfig.hosts_for_bind("0.0.0.0") is None
    assert GuardConfig.hosts_for_bind("::1") == LOOPBACK
    assert GuardConfig.hosts_for_bind("127.0.0.2") == LOOPBACK


def test_web_page_cannot_post_text_plain_to_a_local_server(local):
    # A form or fetch() with text/plain needs no CORS preflight: the Origin check stops it.
    headers = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    r = httpx.post(local + COMPLETIONS, content=json.dumps(HELLO), headers=headers)
    error = _assert_refused(r, 403, "origin_not_allowed")
    assert "--allowed-origins" in error["message"]
    r = httpx.post(local + COMPLETIONS, json=HELLO, headers={"Origin": "null"})
    _assert_refused(r, 403, "origin_not_allowed")


def test_same_origin_requests_are_accepted(local):
    origin = local  # http://127.0.0.1:PORT, what the server's own page would send
    assert (
        httpx.post(local + COMPLETIONS, json=HELLO, headers={"Origin": origin}).status_code == 200
    )


def test_allowed_origin_gets_cors_headers_and_preflight():
    app_origin = "https://app.example"
    with guarded(allowed_origins=(app_origin,)) as url:
        r = httpx.post(url + COMPLETIONS, json=HELLO, headers={"Origin": app_origin})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == app_origin
        preflight = {
            "Origin": app_origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        r = httpx.options(url + COMPLETIONS, headers=preflight)
        assert r.status_code == 200
        assert "POST" in r.headers["access-control-allow-methods"]
        r = httpx.post(url + COMPLETIONS, json=HELLO, headers={"Origin": "https://other.example"})
        assert r.status_code == 403


def test_preflight_needs_no_api_key_but_the_request_does():
    app_origin = "https://app.example"
    with guarded(allowed_origins=(app_origin,), api_keys=("k",)) as url:
        preflight = {"Origin": app_origin, "Access-Control-Request-Method": "POST"}
        assert httpx.options(url + COMPLETIONS, headers=preflight).status_code == 200
        r = httpx.post(url + COMPLETIONS, json=HELLO, headers={"Origin": app_origin})
        assert r.status_code == 401


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_bodies_must_be_application_json(local, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(local + COMPLETIONS, content=json.dumps(HELLO).encode(), headers=headers)
    _assert_refused(r, 415, "unsupported_media_type")


def test_json_with_charset_is_accepted(local):
    headers = {"Content-Type": "Application/JSON; charset=utf-8"}
    r = httpx.post(local + COMPLETIONS, content=json.dumps(HELLO).encode(), headers=headers)
    assert r.status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "hi", "temperature": NaN}',
        b'{"prompt": "hi", "temperature": Infinity}',
        b'{"prompt": "hi", "seed": -Infinity}',
        b"",
        b"   ",
        b'{"prompt": "\xff\xfe"}',
        b'{"prompt": "hi", "seed": ' + b"9" * 5000 + b"}",
    ],
    ids=["nan", "infinity", "minus-infinity", "empty", "blank", "not-utf8", "5000-digit-int"],
)
def test_non_json_values_are_400(local, raw):
    r = httpx.post(local + COMPLETIONS, content=raw, headers={"Content-Type": "application/json"})
    _assert_refused(r, 400, "invalid_json")


def test_deep_json_is_refused_before_parsing(local):
    deep = b'{"prompt": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(local + COMPLETIONS, content=deep, headers={"Content-Type": "application/json"})
    error = _assert_refused(r, 400, "json_too_deep")
    assert "--max-json-depth" in error["message"]


def _limits(**fields) -> RequestLimits:
    return RequestLimits(**fields)


SHAPES = [
    # (id, body, limit field, limit, param)
    (
        "messages",
        {"messages": [{"role": "user", "content": ""}] * 9},
        "max_messages",
        8,
        "messages",
    ),
    (
        "content-parts",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}] * 8}]},
        "max_messages",
        8,
        "messages",
    ),
    ("stop", {"prompt": "hi", "stop": ["a"] * 5}, "max_stop", 4, "stop"),
    ("stop-token-ids", {"prompt": "hi", "stop_token_ids": [1] * 5}, "max_stop_token_ids", 4, None),
    (
        "logit-bias",
        {"prompt": "hi", "logit_bias": {str(i): 1 for i in range(5)}},
        "max_logit_bias",
        4,
        None,
    ),
    ("token-ids", {"prompt": [5] * 65}, "max_prompt_tokens", 64, "prompt"),
    ("token-id-batch", {"prompt": [[5], [5] * 65]}, "max_prompt_tokens", 64, "prompt"),
]


@pytest.mark.parametrize(
    ("body", "field", "limit", "param"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES]
)
def test_request_shape_limits_refuse_before_any_work(body, field, limit, param):
    limits = RequestLimits(**{field: limit})
    with guarded(limits=limits) as url:
        path = CHAT if "messages" in body else COMPLETIONS
        error = _assert_refused(httpx.post(url + path, json=body), 400, "request_too_large")
        assert error["param"] == (param or field.removeprefix("max_"))
        assert "--" + field.replace("_", "-") in error["message"]


def test_shapes_at_the_limit_pass_the_guard():
    limits = RequestLimits(max_messages=8, max_stop=4, max_prompt_tokens=64)
    check_shape({"messages": [{"role": "user", "content": "x"}] * 8}, limits)
    check_shape({"prompt": [5] * 64, "stop": ["a"] * 4}, limits)
    check_shape({"prompt": "a string is limited by the context, not here" * 100}, limits)


@pytest.mark.parametrize(
    ("raw", "limit", "deeper"),
    [
        (b'{"a": [1, {"b": [2]}]}', 4, False),
        (b'{"a": [1, {"b": [2]}]}', 3, True),
        (b'{"a": "[[[[[[[[[[[[[[[["}', 2, False),  # brackets inside strings do not count
        (b'{"a": "\\"[[[[[["}', 1, False),  # nor after an escaped quote
        (b"[" * 50 + b"]" * 50, 32, True),
        (b"[[]" * 40 + b"]" * 40, 32, True),  # depth grows without a long run of '['
        (b"[[]]" * 10_000, 2, False),
        (b'{"a": [}', 5, False),  # malformed: left to the parser
    ],
)
def test_json_depth_is_measured_on_the_bytes(raw, limit, deeper):
    assert json_depth_exceeds(raw, limit) is deeper


@pytest.mark.parametrize(
    ("header", "name"),
    [("LocalHost:80", "localhost"), ("[::1]:8000", "::1"), ("::1", "::1"), ("a.b", "a.b")],
)
def test_host_name_strips_port_and_brackets(header, name):
    assert host_name(header) == name


def test_request_limits_must_be_positive():
    with pytest.raises(ConfigError, match="max_messages"):
        RequestLimits(max_messages=0)
    with pytest.raises(ConfigError, match="max_stop"):
        RequestLimits(max_stop=True)


def test_limits_for_context_scale_with_the_model():
    assert RequestLimits.for_context(2048).max_prompt_tokens == 2048
    assert RequestLimits.for_context(2048).max_body_bytes == 256 << 10
    assert RequestLimits.for_context(131072).max_body_bytes == 8 << 20
    assert RequestLimits.for_context(2048, max_body_bytes=10).max_body_bytes == 10


def test_slow_body_gets_408_and_the_server_keeps_serving(parser):
    with guarded(body_timeout_s=0.5) as url, connect(url) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt":'
        )
        started = time.monotonic()
        reply = read_to_close(sock)  # the server answers, then closes
        assert time.monotonic() - started < 5
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert httpx.post(url + COMPLETIONS, json=HELLO).status_code == 200


@pytest.mark.parametrize("sent", [b"", b"POST /v1/completions HTTP/1.1\r\nHost: 127.0."])
def test_unfinished_request_head_gets_408_and_is_closed(sent, parser):
    with guarded(header_timeout_s=0.5) as url, connect(url) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        reply = read_to_close(sock)
        assert time.monotonic() - started < 5
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("pipelined", [True, False])
def test_head_timeout_applies_to_the_next_request_on_a_kept_alive_connection(pipelined, parser):
    with guarded(header_timeout_s=0.5) as url, connect(url) as sock:
        body = json.dumps(HELLO).encode()
        request = (
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        partial = b"POST /v1/completions HTTP/1.1\r\nHost: 1"
        if pipelined:
            sock.sendall(request + partial)
        else:
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(partial)
        started = time.monotonic()
        reply = read_to_close(sock)
        assert time.monotonic() - started < 3  # uvicorn's keep-alive would take 5 s
        assert reply.count(b"HTTP/1.1 408") == 1


def test_connections_beyond_the_cap_get_503_then_service_resumes(parser):
    with guarded(max_connections=2, header_timeout_s=30) as url:
        idle = [connect(url) for _ in range(2)]
        time.sleep(0.2)  # let the server accept them
        with httpx.Client() as client:
            r = client.post(url + COMPLETIONS, json=HELLO)
        error = _assert_refused(r, 503, "too_many_connections")
        assert "--max-connections" in error["message"]
        assert r.headers["retry-after"] == "1"
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        assert httpx.post(url + COMPLETIONS, json=HELLO).status_code == 200


def test_draining_server_refuses_new_requests_with_503():
    drain = Drain()
    with guarded(drain=drain) as url:
        assert httpx.post(url + COMPLETIONS, json=HELLO).status_code == 200
        drain.start()
        r = httpx.post(url + COMPLETIONS, json=HELLO)
        _assert_refused(r, 503, "shutting_down")
        assert r.headers["retry-after"] == "1"


def test_unknown_parser_is_refused():
    with pytest.raises(ConfigError, match="h11 or httptools"):
        connections.protocol_class(GuardConfig(), parser="picohttp")
