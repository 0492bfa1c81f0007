"""Large inputs are tokenized and rendered on a worker thread; small ones inline, on the loop."""

from __future__ import annotations

import threading

import httpx
import pytest

from latlab.serve.app import OFFLOAD_ABOVE, create_app
from latlab.serve.server import running_server
from serve.fake_engine import MODEL, FakeEngine, FakeParams, FakeTokenizer


class ThreadRecordingTokenizer(FakeTokenizer):
    """Records the thread each encode and chat-template render ran on."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.threads.append(threading.current_thread().name)
        return super().encode(text, add_special_tokens)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        self.threads.append(threading.current_thread().name)
        return super().apply_chat_template(messages, tokenize, add_generation_prompt)


@pytest.fixture
def served():
    tokenizer = ThreadRecordingTokenizer()
    engine = FakeEngine(max_model_len=OFFLOAD_ABOVE * 4, num_kv_blocks=OFFLOAD_ABOVE * 2)
    engine.tokenizer = tokenizer
    with running_server(create_app(engine, MODEL, make_params=FakeParams)) as url:
        yield url, tokenizer


def _post(url: str, path: str, body: dict) -> None:
    r = httpx.post(url + path, json={**body, "max_tokens": 1}, timeout=30)
    assert r.status_code == 200, r.text


def test_small_prompt_is_tokenized_inline(served):
    url, tokenizer = served
    _post(url, "/v1/completions", {"prompt": "hello"})
    assert tokenizer.threads == ["latlab-serve"]  # the event loop's thread


def test_large_prompt_is_tokenized_on_the_worker(served):
    url, tokenizer = served
    _post(url, "/v1/completions", {"prompt": "x" * (OFFLOAD_ABOVE + 1)})
    assert [t.startswith("latlab-prep") for t in tokenizer.threads] == [True]


def test_many_messages_are_rendered_on_the_worker(served):
    url, tokenizer = served
    messages = [{"role": "user", "content": "hi"}] * 100
    _post(url, "/v1/chat/completions", {"messages": messages})
    assert len(tokenizer.threads) == 2  # template, then encode
    assert all(t.startswith("latlab-prep") for t in tokenizer.threads)


def test_long_stop_list_moves_the_work_to_the_worker(served):
    url, tokenizer = served
    stops = ["s" * 100] * 50
    _post(url, "/v1/completions", {"prompt": "hello", "stop": stops})
    assert [t.startswith("latlab-prep") for t in tokenizer.threads] == [True]


def test_refusals_from_the_worker_are_400s(served):
    url, _ = served
    r = httpx.post(
        url + "/v1/completions", json={"prompt": "x" * (OFFLOAD_ABOVE + 1), "model": "no"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_large_tokenize_request_runs_on_the_worker(served):
    url, tokenizer = served
    r = httpx.post(url + "/tokenize", json={"prompt": "x" * (OFFLOAD_ABOVE + 1)}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["count"] == OFFLOAD_ABOVE + 1
    assert [t.startswith("latlab-prep") for t in tokenizer.threads] == [True]
