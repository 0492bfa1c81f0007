"""Reading OpenAI replies: which chunks are token arrivals, and what usage is believed."""

import json

import pytest

from latlab.bench.openai_reply import ReplyError, read_stream, read_whole
from latlab.bench.token_count import Seen, check_usage, count_reply
from latlab.metrics import RequestRecord


def sse(*objs):
    """Network reads 1 ms apart (ns 1_000_000, 2_000_000, ...), one event each, then [DONE]."""
    reads = [(i * 1_000_000, b"data: " + json.dumps(o).encode() + b"\n\n")
             for i, o in enumerate(objs, 1)]  # fmt: skip
    return [*reads, ((len(objs) + 1) * 1_000_000, b"data: [DONE]\n\n")]


def chat(content=None, finish=None, role=None, **delta):
    d = dict(delta)
    if role:
        d["role"] = role
    if content is not None:
        d["content"] = content
    return {"choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def text(t, finish=None):
    return {"choices": [{"index": 0, "text": t, "finish_reason": finish}]}


def usage(completion, prompt=5, cached=None):
    u = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"choices": [], "usage": u}


def counted(reads, max_tokens=100, tokenizer=None):
    reply = read_stream(reads)
    seen = Seen(text="".join(reply.texts), text_chunks=sum(1 for t in reply.texts if t),
                arrivals=len(reply.arrivals), max_tokens=max_tokens)  # fmt: skip
    rec = RequestRecord(send_ns=0)
    count_reply(rec, reply, seen, tokenizer)
    return rec


def test_an_empty_first_token_chunk_is_the_first_token_and_the_role_chunk_is_not():
    """vLLM: the role chunk carries content "", then a token that decodes to nothing."""
    rec = counted(sse(chat("", role="assistant"), chat(""), chat(" Hi"), chat("!", "stop"),
                      usage(3)))  # fmt: skip
    assert rec.chunk_ns == [2_000_000, 3_000_000, 4_000_000]
    assert rec.ttft_ns == 2_000_000 and rec.first_text_ns == 3_000_000
    assert rec.chunk_tokens == [1, 1, 1] and rec.empty_chunks == 1
    assert rec.output_tokens_source == "usage" and rec.finish_reason == "stop"


def test_an_eos_chunk_with_empty_text_is_a_token_when_usage_counts_it():
    rec = counted(sse(text(" a"), text(" b"), text("", "stop"), usage(3)))
    assert len(rec.chunk_ns) == 3 and rec.chunk_tokens == [1, 1, 1]


def test_a_closing_chunk_that_usage_does_not_count_carried_no_token():
    """OpenAI closes a chat stream with an empty delta and a finish_reason: not a token."""
    for closing in (chat(finish="length"), chat("", "length"), text("", "length")):
        rec = counted(sse(chat(" a"), chat(" b"), closing, usage(2)))
        assert rec.chunk_ns == [1_000_000, 2_000_000] and rec.chunk_tokens == [1, 1]
    plain = counted(sse(chat(" a"), chat(" b"), chat(finish="stop")))  # no usage at all
    assert plain.output_tokens_source == "chunks" and plain.output_tokens == 2


def test_reasoning_and_tool_call_deltas_are_tokens_and_usage_only_chunks_are_not():
    rec = counted(sse(chat(reasoning_content="think"), chat(tool_calls=[{"index": 0}]),
                      chat(" x"), usage(3)))  # fmt: skip
    assert len(rec.chunk_ns) == 3 and rec.first_text_chunk == 0


@pytest.mark.parametrize(
    ("reads", "reason"),
    [([(1, b"data: {not json\n\n")], "malformed_sse"),
     ([(1, b'data: {"error": {"message": "boom"}}\n\n')], "stream_error"),
     ([(1, b'data: {"choices": [{"text": "a"}]}\n\n')], "no_done"),
     ([(1, b"data: [1, 2]\n\n"), (2, b"data: [DONE]\n\n")], "malformed_sse")],
)  # fmt: skip
def test_broken_streams_name_their_reason(reads, reason):
    with pytest.raises(ReplyError) as exc:
        read_stream(reads)
    assert exc.value.reason == reason


def test_an_unstreamed_reply_keeps_its_text_usage_and_finish_reason():
    body = json.dumps({"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()  # fmt: skip
    text_, reply = read_whole(body, chat=True)
    assert text_ == "hi" and reply.usage["completion_tokens"] == 1
    assert reply.finish_reason == "stop" and reply.arrivals == []
    with pytest.raises(ReplyError, match="KeyError"):
        read_whole(b'{"choices": [{}]}', chat=False)


# ---------------------------------------------------------------------------- lying servers


def seen(text="abcdefgh", text_chunks=2, arrivals=2, max_tokens=16, prompt_bytes=None):
    return Seen(text=text, text_chunks=text_chunks, arrivals=arrivals, max_tokens=max_tokens,
                prompt_bytes=prompt_bytes)  # fmt: skip


@pytest.mark.parametrize(
    ("u", "problem"),
    [({"completion_tokens": -1}, "completion_tokens not a count"),
     ({"completion_tokens": 2.5}, "completion_tokens not a count"),
     ({"completion_tokens": True}, "completion_tokens not a count"),
     ({"completion_tokens": "3"}, "completion_tokens not a count"),
     ({"completion_tokens": 17}, "completion_tokens above max_tokens"),
     ({"completion_tokens": 1}, "completion_tokens below the chunks with text"),
     ({"completion_tokens": 11}, "completion_tokens beyond the text"),
     ({"prompt_tokens": -5}, "prompt_tokens not a count"),
     ({"prompt_tokens": 0}, "prompt_tokens not a count"),
     ({"prompt_tokens": 4, "prompt_tokens_details": {"cached_tokens": 9}},
      "cached_tokens impossible"),
     ({"prompt_tokens_details": {"cached_tokens": -2}}, "cached_tokens impossible"),
     ({"prompt_tokens": 2000}, "prompt_tokens beyond the prompt"),
     ({"prompt_tokens": 4, "completion_tokens": 10, "total_tokens": 99},
      "total_tokens not prompt + completion")],
)  # fmt: skip
def test_impossible_usage_figures_are_rejected_with_the_reason(u, problem):
    checked = check_usage(u, seen(prompt_bytes=20))
    assert set(checked.rejected) == {problem}
    assert checked.completion is None or not problem.startswith("completion")


def test_plausible_usage_is_believed():
    c = check_usage({"completion_tokens": 10, "prompt_tokens": 4,
                     "prompt_tokens_details": {"cached_tokens": 4}}, seen())  # fmt: skip
    assert (c.completion, c.prompt, c.cached, c.rejected) == (10, 4, 4, {})


class _CharTokenizer:
    def encode(self, text, add_special_tokens=False):
        return list(text)


def test_a_rejected_usage_falls_back_to_the_tokenizer_or_the_chunks():
    reads = sse(text(" a"), text(" b"), usage(1_000_000, prompt=-5))
    rec = counted(reads, tokenizer=_CharTokenizer())
    assert (rec.output_tokens, rec.output_tokens_source) == (4, "tokenizer")
    assert set(rec.usage_rejected) == {"completion_tokens above max_tokens",
                                       "prompt_tokens not a count"}  # fmt: skip
    assert rec.prompt_tokens is None
    rec = counted(reads)
    assert (rec.output_tokens, rec.output_tokens_source) == (2, "chunks")


def test_protocol_lies_are_noted_and_what_follows_done_is_not_read():
    after_done = [*sse(text(" a"), text(" b", "length"), usage(2)),
                  (9_000_000, b'data: {"choices": [{"text": " c"}]}\n\n')]  # fmt: skip
    reply = read_stream(after_done)
    assert reply.texts == [" a", " b"] and reply.done_ns == 4_000_000
    assert set(reply.problems) == {"data after [DONE]"}
    rec = counted(sse(text(" a", "length"), text(" b"), usage(2)))
    assert set(rec.reply_problems) == {"tokens after finish_reason"} and rec.output_tokens == 2
    shrinking = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}
    rec = counted(sse(shrinking, text(" a"), usage(1, prompt=6)))
    assert set(rec.reply_problems) == {"usage went backwards", "prompt_tokens changed mid-stream"}
    assert counted(sse(text(" a"), text(" b", "stop"), usage(2))).reply_problems == {}
