"""Log-probabilities over HTTP, in OpenAI's and vLLM's shapes, from the real engine (fp32)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from latlab.engine import AsyncLLM, EngineConfig
from latlab.serve.app import create_app
from latlab.serve.server import running_server

NAME = "bundled"


@pytest.fixture(scope="module")
def served():
    engine = AsyncLLM(EngineConfig(dtype="float32", num_threads=1, kv_cache_bytes=2**24))
    with running_server(create_app(engine, NAME)) as url:
        yield engine, url
    asyncio.run(engine.shutdown())


def _post(url: str, path: str, body: dict) -> dict:
    response = httpx.post(url + path, json={"model": NAME, "temperature": 0.0, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_completion_logprobs_score_each_generated_token(served) -> None:
    _, url = served
    body = _post(url, "/v1/completions", {"prompt": "Return the number of", "max_tokens": 4,
                                          "logprobs": 3})  # fmt: skip
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][0] == 0
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                 strict=True):  # fmt: skip
        assert value <= 0.0
        assert 3 <= len(top) <= 4 and top[token] == value
        assert value == max(top.values())  # greedy picks the most likely token


def test_echo_scores_the_prompt_and_prompt_logprobs_are_keyed_by_token_id(served) -> None:
    engine, url = served
    prompt = "Return the number of items"
    ids = engine.tokenizer.encode(prompt)
    body = _post(url, "/v1/completions", {"prompt": prompt, "max_tokens": 1, "echo": True,
                                          "logprobs": 1})  # fmt: skip
    choice = body["choices"][0]
    assert choice["text"].startswith(prompt)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 1
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    per_id = choice["prompt_logprobs"]  # echo + logprobs implies vLLM's prompt_logprobs
    assert per_id[0] is None and len(per_id) == len(ids)
    for position, token in enumerate(ids[1:], start=1):
        entry = per_id[position][str(token)]
        assert entry["logprob"] == pytest.approx(lp["token_logprobs"][position])
        assert entry["rank"] >= 1 and entry["decoded_token"] == lp["tokens"][position]


def test_chat_logprobs_and_streamed_chunks_carry_their_tokens(served) -> None:
    _, url = served
    body = _post(url, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Return"}], "max_tokens": 3, "logprobs": True,
        "top_logprobs": 2})  # fmt: skip
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    for item in content:
        assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
        assert item["bytes"] == list(item["token"].encode())
        assert len(item["top_logprobs"]) == 2
    streamed = []
    request = {"model": NAME, "prompt": "Return the number of", "max_tokens": 4,
               "temperature": 0.0, "logprobs": 1, "stream": True}  # fmt: skip
    with httpx.stream("POST", url + "/v1/completions", json=request, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                if choice["logprobs"]:
                    streamed += choice["logprobs"]["tokens"]
    whole = _post(url, "/v1/completions", {**request, "stream": False})
    assert streamed == whole["choices"][0]["logprobs"]["tokens"]


def test_no_logprob_fields_unless_asked(served) -> None:
    _, url = served
    body = _post(url, "/v1/completions", {"prompt": "Return", "max_tokens": 2})
    assert body["choices"][0]["logprobs"] is None
    assert "prompt_logprobs" not in body["choices"][0]
