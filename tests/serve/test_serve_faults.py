"""Bad input -> 400 with an OpenAI-style body; full queue -> 503; disconnects free the sequence."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]

BAD_REQUESTS = [
    # (id, path, raw body or json, param expected in the error, or None)
    ("invalid-json", COMPLETIONS, b'{"prompt": "hi",', None),
    ("not-an-object", COMPLETIONS, b"[1, 2]", None),
    ("missing-prompt", COMPLETIONS, {"max_tokens": 3}, "prompt"),
    ("prompt-wrong-type", COMPLETIONS, {"prompt": 5}, "prompt"),
    ("max-tokens-string", COMPLETIONS, {"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
    ("max-tokens-bool", COMPLETIONS, {"prompt": "hi", "max_tokens": True}, "max_tokens"),
    ("temperature-string", COMPLETIONS, {"prompt": "hi", "temperature": "hot"}, "temperature"),
    ("negative-temperature", COMPLETIONS, {"prompt": "hi", "temperature": -1.0}, "temperature"),
    ("top-p-zero", COMPLETIONS, {"prompt": "hi", "top_p": 0.0}, "top_p"),
    ("negative-max-tokens", COMPLETIONS, {"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ("zero-max-tokens", COMPLETIONS, {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("huge-max-tokens", COMPLETIONS, {"prompt": "hi", "max_tokens": 10**12}, "max_tokens"),
    ("prompt-too-long", COMPLETIONS, {"prompt": "x" * 300, "max_tokens": 1}, "prompt"),
    ("unknown-model", COMPLETIONS, {"model": "gpt-9", "prompt": "hi"}, "model"),
    ("n-2", COMPLETIONS, {"prompt": "hi", "n": 2}, "n"),
    ("penalty-range", COMPLETIONS, {"prompt": "hi", "presence_penalty": 2.5}, "presence_penalty"),
    ("repetition-zero", COMPLETIONS, {"prompt": "hi", "repetition_penalty": 0}, None),
    ("seed-beyond-64-bits", COMPLETIONS, {"prompt": "hi", "seed": 2**64}, "seed"),
    ("seed-below-64-bits", COMPLETIONS, {"prompt": "hi", "seed": -(2**63) - 1}, "seed"),
    ("temperature-overflow", COMPLETIONS, b'{"prompt": "hi", "temperature": 1e400}', None),
    ("top-p-overflow", COMPLETIONS, b'{"prompt": "hi", "top_p": -1e999}', None),
    ("logit-bias-not-id", COMPLETIONS, {"prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias"),
    ("logit-bias-range", COMPLETIONS, {"prompt": "hi", "logit_bias": {"5": 500}}, "logit_bias"),
    (
        "response-format",
        CHAT,
        {"messages": USER, "response_format": {"type": "json_object"}},
        "response_format",
    ),
    ("tools", CHAT, {"messages": USER, "tools": [{"type": "function"}]}, "tools"),
    ("chat-template", CHAT, {"messages": USER, "chat_template": "{{ 1 }}"}, "chat_template"),
    (
        "guided-json",
        COMPLETIONS,
        {"prompt": "hi", "guided_json": {"type": "object"}},
        "guided_json",
    ),
    ("min-p", COMPLETIONS, {"prompt": "hi", "min_p": 0.1}, "min_p"),
    ("logprobs-over-20", COMPLETIONS, {"prompt": "hi", "logprobs": 21}, "logprobs"),
    ("logprobs-bool", COMPLETIONS, {"prompt": "hi", "logprobs": True}, "logprobs"),
    (
        "prompt-logprobs-streamed",
        COMPLETIONS,
        {"prompt": "hi", "prompt_logprobs": 1, "stream": True},
        "prompt_logprobs",
    ),
    ("chat-logprobs-int", CHAT, {"messages": USER, "logprobs": 3}, "logprobs"),
    ("chat-top-logprobs-alone", CHAT, {"messages": USER, "top_logprobs": 2}, "top_logprobs"),
    ("echo-streamed", COMPLETIONS, {"prompt": "hi", "echo": True, "stream": True}, "echo"),
    ("lone-surrogate-prompt", COMPLETIONS, b'{"prompt": "a\\ud800b"}', "prompt"),
    (
        "lone-surrogate-chat",
        CHAT,
        b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
        "messages",
    ),
    ("batch-of-two", COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
    ("empty-prompt", COMPLETIONS, {"prompt": ""}, "prompt"),
    ("token-id-out-of-vocab", COMPLETIONS, {"prompt": [5, 100000]}, "prompt"),
    ("min-over-max", COMPLETIONS, {"prompt": "hi", "max_tokens": 2, "min_tokens": 5}, None),
    ("chat-no-messages", CHAT, {"messages": []}, "messages"),
    ("chat-bad-role", CHAT, {"messages": [{"role": "robot", "content": "x"}]}, None),
    ("chat-content-int", CHAT, {"messages": [{"role": "user", "content": 3}]}, None),
    ("chat-template-fails", CHAT, {"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ("chat-unknown-model", CHAT, {"model": "nope", "messages": USER}, "model"),
    ("chat-huge-max-completion", CHAT, {"messages": USER, "max_completion_tokens": 999}, None),
    ("chat-stream-n-3", CHAT, {"messages": USER, "stream": True, "n": 3}, "n"),
]


@pytest.mark.parametrize(
    ("path", "body", "param"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_is_400_and_server_keeps_serving(url, path, body, param):
    if isinstance(body, bytes):
        r = httpx.post(url + path, content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(url + path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param)
    ok = httpx.post(f"{url}{COMPLETIONS}", json={"prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200


def test_invalid_json_message_says_json(url):
    r = httpx.post(
        url + COMPLETIONS, content=b"{nope", headers={"content-type": "application/json"}
    )
    assert "JSON" in r.json()["error"]["message"]


def test_context_message_gives_the_numbers(url):
    r = httpx.post(url + COMPLETIONS, json={"prompt": "hi", "max_tokens": 255})
    message = r.json()["error"]["message"]
    assert "256" in message and "257" in message
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_request_larger_than_kv_cache_is_400(engine, url):
    engine.num_kv_blocks = 8  # 32 tokens in all
    r = httpx.post(url + COMPLETIONS, json={"prompt": "hi", "max_tokens": 40})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "capacity_exceeded"
    assert "KV" in r.json()["error"]["message"]
    assert httpx.post(url + COMPLETIONS, json={"prompt": "hi", "max_tokens": 4}).status_code == 200


def test_full_queue_is_503_with_retry_after(engine, url):
    engine.max_running = 1
    engine.max_waiting = 1
    engine.gate = threading.Event()
    body = {"prompt": "hi", "max_tokens": 2}

    async def scenario():
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            running = asyncio.create_task(client.post(COMPLETIONS, json=body))
            await _until(lambda: engine.stats().num_running == 1)
            queued = asyncio.create_task(client.post(COMPLETIONS, json=body))
            await _until(lambda: engine.stats().num_waiting == 1)
            rejected = await client.post(COMPLETIONS, json={**body, "stream": True})
            engine.gate.set()
            return rejected, await running, await queued

    rejected, first, second = asyncio.run(scenario())
    assert rejected.status_code == 503
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["type"] == "overloaded_error"
    assert first.status_code == 200 and second.status_code == 200


def test_disconnect_mid_stream_frees_kv(engine, url):
    engine.token_delay_s = 0.02
    before = engine.stats().kv_cache_usage
    body = {"prompt": "hello", "max_tokens": 200, "stream": True}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", url + COMPLETIONS, json=body) as r,
    ):
        lines = r.iter_lines()
        seen = [line for _, line in zip(range(6), lines, strict=False) if line]
        assert len(seen) == 3
        assert engine.stats().kv_cache_usage > before
    # Leaving the block closed the connection: the sequence must be gone at once.
    _wait_until(lambda: engine.stats().kv_cache_usage == before and engine.aborted)
    assert engine.stats().num_running == 0
    assert engine.generation_tokens_total < 50


def test_disconnect_before_first_token_aborts(engine, url):
    engine.gate = threading.Event()

    async def scenario():
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            task = asyncio.create_task(client.post(COMPLETIONS, json={"prompt": "hi"}))
            await _until(lambda: engine.stats().num_running == 1)
            task.cancel()

    asyncio.run(scenario())
    _wait_until(lambda: engine.stats().num_running == 0 and engine.aborted)
    assert engine.generation_tokens_total == 0


async def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def _wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_huge_prompt_is_refused_before_tokenizing(url, engine):
    prompt = "x" * (engine.max_model_len * 64 + 1)
    r = httpx.post(url + COMPLETIONS, json={"prompt": prompt})
    assert r.status_code == 400
    assert "characters" in r.json()["error"]["message"]
    chat = {"messages": [{"role": "user", "content": prompt}]}
    assert httpx.post(url + CHAT, json=chat).status_code == 400


def test_body_over_the_limit_is_413(engine):
    from latlab.serve.app import create_app
    from latlab.serve.guard import GuardConfig, RequestLimits
    from latlab.serve.server import running_server
    from serve.fake_engine import MODEL, FakeParams

    guard = GuardConfig(limits=RequestLimits(max_body_bytes=1000))
    app = create_app(engine, MODEL, make_params=FakeParams, guard=guard)
    with running_server(app) as url:
        r = httpx.post(url + COMPLETIONS, json={"prompt": "y" * 2000})
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large"

        def chunked():  # no Content-Length: the limit is enforced while reading
            yield b'{"prompt": "'
            yield b"z" * 2000
            yield b'"}'

        r = httpx.post(
            url + COMPLETIONS, content=chunked(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        ok = httpx.post(url + COMPLETIONS, json={"prompt": "hi", "max_tokens": 1})
        assert ok.status_code == 200
