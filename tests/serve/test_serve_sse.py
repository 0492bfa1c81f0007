"""SSE chunks: the pre-rendered fast path writes exactly what the dict path writes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from latlab.serve.sse import DONE, ChunkWriter


@given(text=st.text(), chat=st.booleans(), usage=st.booleans())
def test_fast_content_chunk_equals_rendered_chunk(text, chat, usage):
    writer = ChunkWriter("id-1", 'model "q"', chat=chat, include_usage=usage)
    fast = writer.content(text)
    assert fast == writer._content_chunk(text, None)
    payload = json.loads(fast[len(b"data: ") : -2])
    choice = payload["choices"][0]
    assert (choice["delta"]["content"] if chat else choice["text"]) == text
    assert ("usage" in payload) == usage


def test_final_chunk_and_usage_shapes():
    writer = ChunkWriter("id", "m", chat=True, include_usage=True)
    final = json.loads(writer.content("", "length")[6:])
    assert final["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    usage = json.loads(writer.usage({"prompt_tokens": 1})[6:])
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 1}
    assert ChunkWriter("id", "m", chat=False, include_usage=False).usage({}) == b""
    assert DONE == b"data: [DONE]\n\n"
