"""latlab.serve.connections' ChunkWriter: whole chunks framed by the app, written as they are
on httptools connections, declined whenever the response cannot take them."""

from __future__ import annotations

from types import SimpleNamespace

import httpx

from latlab.serve.connections import ChunkWriter
from latlab.serve.guard import CHUNK_WRITER_KEY, GuardConfig
from latlab.serve.server import running_server

GUARD = GuardConfig(allowed_hosts=GuardConfig.hosts_for_bind("127.0.0.1"))


async def _streaming_app(scope, receive, send):
    """Writes three chunks: one through send, two framed here through the writer if offered;
    the last header says whether the writer took them."""
    if scope["type"] != "http":
        return
    writer = scope.get("extensions", {}).get(CHUNK_WRITER_KEY)
    before = writer.write(b"3\r\nnot\r\n") if writer is not None else None  # not started yet
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"one ", "more_body": True})
    took = writer is not None and writer.write(b"4\r\ntwo \r\n6\r\nthree \r\n")
    if not took:
        await send({"type": "http.response.body", "body": b"two three ", "more_body": True})
    await send({"type": "http.response.body", "body": b"end", "more_body": False})
    after = writer.write(b"1\r\nx\r\n") if writer is not None else None  # complete: declined
    scope["state"]["seen"].append((writer is not None, before, took, after))


def test_httptools_connections_offer_the_writer_and_h11_ones_do_not(parser):
    seen: list[tuple] = []

    async def app(scope, receive, send):
        scope.setdefault("state", {})["seen"] = seen
        await _streaming_app(scope, receive, send)

    with running_server(app, guard=GUARD) as url, httpx.Client(base_url=url) as client:
        bodies = [client.post("/x", json={}).text for _ in range(2)]  # one kept-alive connection
    assert bodies == ["one two three end"] * 2
    offered = parser == "httptools"
    expected = (True, False, True, False) if offered else (False, None, False, None)
    assert seen == [expected, expected]


def _cycle(**state):
    written: list[bytes] = []
    fields = {"response_started": True, "response_complete": False, "chunked_encoding": True,
              "disconnected": False, "flow": SimpleNamespace(write_paused=False),
              "transport": SimpleNamespace(write=written.append)}  # fmt: skip
    fields.update(state)
    return SimpleNamespace(**fields), written


def test_the_writer_declines_whenever_the_response_cannot_take_raw_chunks():
    for state in ({"response_started": False}, {"response_complete": True},
                  {"chunked_encoding": False}, {"disconnected": True},
                  {"flow": SimpleNamespace(write_paused=True)}):  # fmt: skip
        cycle, written = _cycle(**state)
        assert not ChunkWriter(cycle).write(b"1\r\na\r\n") and written == [], state
    cycle, written = _cycle()
    assert ChunkWriter(cycle).write(b"1\r\na\r\n") and written == [b"1\r\na\r\n"]


def test_a_head_request_is_offered_no_writer(parser):
    offered: list[bool] = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            offered.append(CHUNK_WRITER_KEY in scope.get("extensions", {}))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    with running_server(app, guard=GUARD) as url:
        assert httpx.head(url + "/x").status_code == 200
    assert offered == [False]
