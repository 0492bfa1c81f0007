import pytest

from latlab.gateway.recording import Recording, SSESplitter, is_error_event, usage_of


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
