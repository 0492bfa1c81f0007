"""The OpenAI API over the fake engine: shapes, streaming, usage, models, health."""

from __future__ import annotations

import json

import httpx

from serve.fake_engine import MODEL


def _sse_events(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: ")
        payload = line[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_completion_non_streaming(url):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 5}
    r = httpx.post(f"{url}/v1/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "text_completion"
    assert data["model"] == MODEL
    assert data["choices"][0]["text"] == "abcde"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["prompt_tokens"] == 2
    assert data["usage"]["completion_tokens"] == 5
    assert data["usage"]["total_tokens"] == 7


def test_completion_default_max_tokens_is_16(url):
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "hi"})
    assert r.json()["usage"]["completion_tokens"] == 16


def test_completion_stream_with_usage(url):
    body = {
        "model": MODEL,
        "prompt": "hey",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(r)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 3
    assert usage_chunk["usage"]["completion_tokens"] == 4
    content = events[:-2]
    assert [c["choices"][0]["text"] for c in content] == ["a", "b", "c", "d"]
    assert [c["choices"][0]["finish_reason"] for c in content] == [None, None, None, "length"]
    assert all(c["usage"] is None for c in content)
    assert all(c["object"] == "text_completion" for c in content)


def test_stream_without_usage_has_no_usage_chunk(url):
    body = {"prompt": "hey", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
        events = _sse_events(r)
    assert events[-1] == "[DONE]"
    assert len(events) == 3
    assert all("usage" not in e for e in events[:-1])


def test_chat_stream_role_chunk_first(url):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        events = _sse_events(r)
    role = events[0]["choices"][0]
    assert role["delta"] == {"role": "assistant", "content": ""}
    assert role["finish_reason"] is None
    content = events[1:-2]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in content) == "abc"
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" for c in events[:-1])
    # "<user>hi<assistant>" with one token per character.
    assert events[-2]["usage"]["prompt_tokens"] == len("<user>hi<assistant>")
    assert events[-2]["usage"]["completion_tokens"] == 3


def test_chat_non_streaming_with_text_parts(url):
    body = {
        "messages": [
            {"role": "system", "content": "s"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}],
            },
        ],
        "max_tokens": 2,
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "ab"}
    assert data["usage"]["prompt_tokens"] == len("<system>s<user>hi<assistant>")


def test_chat_default_max_tokens_fills_the_context(url, engine):
    body = {"messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=body)
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == engine.max_model_len


def test_stop_string_ends_with_stop_reason(url):
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 10, "stop": "d"})
    choice = r.json()["choices"][0]
    assert choice["text"] == "abc"
    assert choice["finish_reason"] == "stop"


def test_token_id_prompt_and_single_item_batch(url):
    r = httpx.post(f"{url}/v1/completions", json={"prompt": [104, 105], "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == 2
    r = httpx.post(f"{url}/v1/completions", json={"prompt": ["hey"], "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == 3


def test_models_and_health(url, engine):
    r = httpx.get(f"{url}/v1/models")
    card = r.json()["data"][0]
    assert card["id"] == MODEL
    assert card["max_model_len"] == engine.max_model_len
    assert httpx.get(f"{url}/health").status_code == 200


def test_unknown_route_is_openai_style_404(url):
    r = httpx.get(f"{url}/v1/nope")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_arrival_is_the_first_byte_where_the_protocol_stamped_it_else_the_apps_call():
    """The server's TTFT starts at the protocol's first-byte stamp (it includes the wait for
    the event loop); an app served by another server stamps when it is called."""
    import asyncio
    import time

    from latlab.serve.app import ARRIVAL_KEY, _StampArrival
    from latlab.serve.guard import HEAD_NS_KEY

    seen: list[int] = []

    async def app(scope, receive, send):
        seen.append(scope["state"][ARRIVAL_KEY])

    stamped = {"type": "http", "state": {HEAD_NS_KEY: 123}}
    before = time.perf_counter_ns()
    asyncio.run(_StampArrival(app)(stamped, None, None))
    asyncio.run(_StampArrival(app)({"type": "http"}, None, None))
    assert seen[0] == 123 and seen[1] >= before
