"""Large requests prepared in the preparation process give what the inline path gives.

One child (spawned, loading the bundled model's tokenizer as the engine does: ~5 s, mostly
importing transformers and torch) serves the whole module; the last test kills it.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from latlab.assets import bundled_model_path
from latlab.model_files import load_tokenizer
from latlab.serve.app import OFFLOAD_ABOVE, create_app
from latlab.serve.prep import PrepProcess, Refusal, Tokens
from latlab.serve.server import running_server
from serve.fake_engine import MODEL, FakeEngine, FakeParams

pytestmark = pytest.mark.slow
LIMIT = 2048  # the bundled model's context


def _wait_ready(process: PrepProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not process.ready:
        assert time.monotonic() < deadline, "the preparation process never came up"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    return Tokens(load_tokenizer(bundled_model_path()), LIMIT)


@pytest.fixture(scope="module")
def process():
    lines: list[str] = []
    prep = PrepProcess(str(bundled_model_path()), LIMIT, report=lines.append, log=lines.append)
    prep.lines = lines  # type: ignore[attr-defined]
    prep.start()
    try:
        _wait_ready(prep)
        yield prep
    finally:
        prep.close()
    with pytest.raises(ProcessLookupError):  # close() waited for it (or killed it)
        os.kill(prep.pid, 0)


def _outcome(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Refusal as exc:
        return ("refused", exc.message, exc.param, exc.code)


def _chat(n: int, chars: int = 100, role_every: int = 2) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [
        {"role": roles[i % role_every % 2], "content": f"message {i} " + "w" * chars}
        for i in range(n)
    ]


CHATS = [
    (_chat(3), True),
    (_chat(150, 20), False),  # fits the context
    (_chat(1024), True),  # the guard's largest chat: refused after counting
    ([{"role": "tool", "content": "x"}, *_chat(200)], True),  # the template raises
    (_chat(2, 80_000) + _chat(2000, 1), True),  # characters far past the context
    ([{"role": "user", "content": "lone \ud800 surrogate"}] * 100, True),
]


@pytest.mark.parametrize(("messages", "generation"), CHATS)
def test_chat_ids_and_refusals_equal_the_inline_ones(tokens, process, messages, generation):
    inline = _outcome(tokens.chat_ids, messages, generation)
    assert _outcome(process.call, "chat_ids", messages, generation) == inline
    unbounded = _outcome(tokens.chat_ids, messages, generation, True, bounded=False)
    assert _outcome(process.call, "chat_ids", messages, generation, True, bounded=False) == (
        unbounded
    )


PROMPTS = [
    "def main():\n    return 1\n" * 200,  # fits
    "lorem ipsum dolor " * 3000,  # past the context: refused after counting
    "x" * (LIMIT * 64 + 1),  # past the character limit
    "a \udfff b " * 1000,
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_ids_and_refusals_equal_the_inline_ones(tokens, process, prompt):
    for special in (True, False):
        inline = _outcome(tokens.prompt_ids, prompt, special)
        assert _outcome(process.call, "prompt_ids", prompt, special) == inline
    assert _outcome(process.call, "prompt_ids", prompt, bounded=False) == _outcome(
        tokens.prompt_ids, prompt, bounded=False
    )


def _serve(process: PrepProcess | None):
    engine = FakeEngine(max_model_len=LIMIT, num_kv_blocks=4096)
    engine.tokenizer = load_tokenizer(bundled_model_path())
    return running_server(create_app(engine, MODEL, make_params=FakeParams, prep_process=process))


BODIES = [
    ("/tokenize", {"messages": _chat(300, 10)}),
    ("/tokenize", {"prompt": "lorem ipsum " * 1000, "return_token_strs": True}),
    ("/v1/chat/completions", {"messages": _chat(1024), "max_tokens": 2}),
    ("/v1/chat/completions", {"messages": _chat(60, 40), "max_tokens": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}] * 100}),
    ("/v1/completions", {"prompt": "lorem ipsum dolor " * 3000, "max_tokens": 2}),
    ("/v1/completions", {"prompt": "def main():\n    return 1\n" * 200, "max_tokens": 2}),
]


def test_the_app_answers_large_requests_from_the_process_as_from_the_thread(process):
    calls: list[str] = []
    real_call = process.call

    def spy(method, *args, **kwargs):
        calls.append(method)
        return real_call(method, *args, **kwargs)

    replies: list[list[tuple[int, dict]]] = [[], []]
    for prep, answers in zip((None, process), replies, strict=True):
        with _serve(prep) as url:
            for path, body in BODIES:
                r = httpx.post(url + path, json=body, timeout=30)
                reply = r.json()
                if path != "/tokenize" and r.status_code == 200:
                    reply = reply["usage"]  # the ids and the text are random; the count is not
                answers.append((r.status_code, reply))
        process.call = spy  # type: ignore[method-assign]
    process.call = real_call  # type: ignore[method-assign]
    assert len(calls) == len(BODIES)
    thread, child = replies
    assert thread == child
    assert [status for status, _ in child] == [200, 200, 400, 200, 400, 400, 200]


def test_small_requests_stay_inline(process):
    calls: list[str] = []
    real_call = process.call
    process.call = lambda method, *a, **k: calls.append(method)  # type: ignore[method-assign]
    try:
        with _serve(process) as url:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
    finally:
        process.call = real_call  # type: ignore[method-assign]
    assert calls == [] and OFFLOAD_ABOVE > 100


def test_a_killed_process_costs_one_503_and_is_replaced(process):
    """Last in the module: it kills the shared child."""
    with _serve(process) as url:
        body = {"messages": _chat(100, 10), "max_tokens": 2}
        first_pid = process.pid
        os.kill(first_pid, signal.SIGKILL)
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "preparation_failed"
        assert r.headers["retry-after"] == "1"
        died = [line for line in process.lines if "died" in line]
        assert len(died) == 1 and str(first_pid) in died[0]
        # Meanwhile the thread prepares; then the new child does.
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
        _wait_ready(process)
        assert process.pid != first_pid
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)
