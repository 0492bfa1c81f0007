import pytest

from latlab.gateway.recording import (
    Recording,
    SSESplitter,
    is_error_event,
    tokens_spent,
    usage_of,
)


def test_splitter_returns_whole_events_across_reads():
    s = SSESplitter()
    assert s.feed(b'data: {"a":1}\n') == []
    assert s.feed(b'\ndata: {"b"') == [b'data: {"a":1}\n\n']
    assert s.feed(b":2}\n\ndata: [DONE]\n\n") == [b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]
    assert s.pending == b""


def test_encode_decode_round_trip_keeps_boundaries_and_timing():
    rec = Recording(status=200, content_type="text/event-stream", stream=True,
                    events=[b"data: 1\n\n", b"data: 22\n\n", b"data: [DONE]\n\n"],
                    offsets_ms=[50.0, 60.5, 61.0], created_s=123.0)  # fmt: skip
    back = Recording.decode(rec.encode())
    assert back == rec
    body = Recording(body=b'{"usage":{"total_tokens":3}}', created_s=1.0)
    assert Recording.decode(body.encode()).usage == {"total_tokens": 3}


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00\x02{}", b"\x00\x00\x00\x02[]xx",
                                  Recording(body=b"abc").encode() + b"extra"])  # fmt: skip
def test_decode_refuses_anything_else(data):
    with pytest.raises(ValueError):
        Recording.decode(data)


def test_error_and_usage_events():
    assert is_error_event(b'data: {"error":{"message":"x"}}\n\n')
    assert not is_error_event(b'data: {"choices":[]}\n\n')
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":2,"total_tokens":5}}\n\n'
    assert usage_of(usage) == {"prompt_tokens": 2, "total_tokens": 5}
    assert usage_of(b'data: {"choices":[],"usage":null}\n\n') is None


@pytest.mark.parametrize("usage,expected", [
    ({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}, 12),
    ({"prompt_tokens": 5, "completion_tokens": 7}, 12),  # no total: the parts
    ({"completion_tokens": 7}, 3 + 4),  # incomplete: the estimate
    (None, 3 + 4),  # a stream without include_usage: prompt estimate + answer events
])  # fmt: skip
def test_tokens_spent_prefers_usage_and_estimates_without_it(usage, expected):
    assert tokens_spent(usage, prompt=3, answer=4) == expected


def test_a_recordings_tokens_count_its_answer_events_when_it_has_no_usage():
    events = [b'data: {"choices":[{"text":" a"}]}\n\n'] * 5 + [b"data: [DONE]\n\n"]
    rec = Recording(stream=True, events=events, offsets_ms=[0.0] * 6)
    assert rec.tokens(10) == 15
