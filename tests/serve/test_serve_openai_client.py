"""The official openai client against the server (fake engine): it parses what we send."""

from __future__ import annotations

import openai
import pytest

from serve.fake_engine import MODEL


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_openai_completions(client):
    out = client.completions.create(model=MODEL, prompt="hi", max_tokens=3)
    assert out.choices[0].text == "abc"
    assert out.usage.completion_tokens == 3


def test_openai_chat_stream_with_usage(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_completion_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "abcd"
    assert chunks[-1].usage.completion_tokens == 4


def test_openai_models_and_errors(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="other", prompt="hi")
    assert "not served" in str(exc.value)
