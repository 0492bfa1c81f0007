"""A flight's pieces when its reads arrive as whole HTTP chunks (``add_chunk``): plain content
events go to caught-up clients as the bytes they arrived in; everything else, and every record
the cache and the token count read, is what ``add`` makes of the same stream."""

from __future__ import annotations

import asyncio
import json

from latlab.gateway.flights import Flight
from latlab.gateway.metrics import GatewayMetrics
from latlab.gateway.relay import Relay

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3}}\n\n'
ERROR = b'data: {"error":{"message":"engine died"}}\n\n'
DONE = b"data: [DONE]\n\n"


def _content(text: str) -> bytes:
    delta = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(delta).encode() + b"\n\n"


def _framed(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


class _Client:
    """An ASGI send and a ChunkWriter for one client; ``takes`` False declines raw chunks."""

    def __init__(self, takes: bool = True) -> None:
        self.sent: list[bytes] = []  # payloads through send
        self.raw: list[bytes] = []  # chunks through the writer
        self.takes = takes

    async def send(self, message: dict) -> None:
        self.sent.append(message["body"])

    def write_chunk(self, chunk: bytes) -> bool:
        if self.takes:
            self.raw.append(chunk)
        return self.takes


def _stream(events: list[bytes], *, chunks: bool, clients: list[_Client]):
    """Feed ``events`` to a new flight (as whole chunks or as payloads), ``clients`` caught up."""

    async def go():
        flight = Flight(key=None, metrics=GatewayMetrics(lambda: []))
        flight.set_head(200, {"content-type": "text/event-stream"})
        for client in clients:
            flight.attach(Relay(client.send, 0, lambda n: None, client.write_chunk))
        for n, event in enumerate(events):
            if chunks:
                framed = _framed(event)
                flight.add_chunk(n, framed, framed.index(b"\r\n") + 2, len(framed) - 2)
            else:
                flight.add(n, event)
        return flight

    return asyncio.run(go())


STREAM = [ROLE, _content("a"), _content("b"), _content("c"), USAGE, DONE]


def test_plain_content_events_after_the_first_go_out_as_the_chunks_they_arrived_in():
    client = _Client()
    _stream(STREAM, chunks=True, clients=[client])
    assert client.raw == [_framed(_content("b")), _framed(_content("c"))]
    assert client.sent == [ROLE, _content("a"), USAGE, DONE]  # role, first content, usage, end


def test_whole_chunks_leave_the_same_records_as_payloads():
    by_chunk = _stream(STREAM, chunks=True, clients=[_Client()])
    by_payload = _stream(STREAM, chunks=False, clients=[_Client()])
    for flight in (by_chunk, by_payload):
        flight._finish()
    assert by_chunk.pieces == by_payload.pieces == STREAM
    assert by_chunk.recording().events == by_payload.recording().events
    assert by_chunk.first_content == by_payload.first_content == 1
    assert by_chunk.usage == by_payload.usage and by_chunk.complete and by_payload.complete


def test_an_error_event_takes_the_careful_way_and_spoils_the_stream():
    client = _Client()
    flight = _stream([ROLE, _content("a"), ERROR, DONE], chunks=True, clients=[client])
    flight._finish()
    assert client.raw == [] and ERROR in client.sent and not flight.complete


def test_a_client_whose_server_declines_or_that_is_behind_gets_send():
    async def go(declining: _Client, behind: _Client, fine: _Client):
        flight = Flight(key=None, metrics=GatewayMetrics(lambda: []))
        flight.set_head(200, {"content-type": "text/event-stream"})
        for n, event in enumerate(STREAM[:4]):
            if n == 2:  # a plain event arrives: one client has all before it, one lacks one
                flight.attach(Relay(fine.send, 2, lambda n: None, fine.write_chunk))
                flight.attach(Relay(behind.send, 1, lambda n: None, behind.write_chunk))
                flight.attach(Relay(declining.send, 2, lambda n: None, declining.write_chunk))
            framed = _framed(event)
            flight.add_chunk(n, framed, framed.index(b"\r\n") + 2, len(framed) - 2)

    declining, behind, fine = _Client(takes=False), _Client(), _Client()
    asyncio.run(go(declining, behind, fine))
    b, c = _content("b"), _content("c")
    assert fine.raw == [_framed(b), _framed(c)] and fine.sent == []
    assert declining.raw == [] and declining.sent == [b, c]
    assert behind.sent == [_content("a") + b] and behind.raw == [_framed(c)]  # caught up
