"""The raw HTTP/1.1 client: framing split at awkward places, keep-alive, close, errors."""

import asyncio

import pytest

from latlab.bench.rawhttp import HTTPStreamError, RawHTTPPool


def serve(responses, pause_s=0.0):
    """A loopback server writing the given raw response pieces (one list per request)."""
    state = {"conns": 0}

    async def handle(reader, writer):
        state["conns"] += 1
        for pieces in responses:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            for piece in pieces:
                if piece is None:
                    writer.close()
                    return
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(pause_s)
        writer.close()

    return handle, state


async def _post(handler, n=1, timeout_s=2.0):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = RawHTTPPool("127.0.0.1", port)
    out = []
    try:
        for _ in range(n):
            reads = []
            status, _ = await pool.post("/v1/completions", b"{}", {}, reads, timeout_s)
            out.append((status, b"".join(d for _, d in reads), len(reads)))
    finally:
        pool.close()
        server.close()
    return out


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_chunked_body_split_at_every_awkward_place_and_keep_alive():
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    whole = CHUNKED + body
    pieces = [whole[i : i + 3] for i in range(0, len(whole), 3)]  # 3-byte reads
    handler, state = serve([pieces, [whole]], pause_s=0.001)
    got = asyncio.run(_post(handler, n=2))
    assert [g[:2] for g in got] == [(200, b"hello world"), (200, b"hello world")]
    assert state["conns"] == 1  # the second request reused the connection


def test_each_read_gets_its_own_timestamp():
    first, second = CHUNKED + b"2\r\nab\r\n", b"2\r\ncd\r\n0\r\n\r\n"
    handler, _ = serve([[first, second]], pause_s=0.02)
    status, body, n_reads = asyncio.run(_post(handler))[0]
    assert (status, body, n_reads) == (200, b"abcd", 2)


def test_one_whole_chunk_per_read_and_chunk_extensions_both_parse():
    # The usual stream read (exactly one chunk) is sliced directly; an extension, a bad size
    # or a read holding less or more than one chunk takes the careful path.
    reads = [CHUNKED, b"3\r\nabc\r\n", b"2;x=y\r\nde\r\n", b"1\r\nf\r\n1\r\n", b"g\r\n",
             b"0\r\n\r\n"]  # fmt: skip
    handler, _ = serve([reads], pause_s=0.01)
    status, body, n_reads = asyncio.run(_post(handler))[0]
    assert (status, body, n_reads) == (200, b"abcdefg", 4)
    handler, _ = serve([[CHUNKED, b"zz\r\nab\r\n"]])
    with pytest.raises(HTTPStreamError) as err:
        asyncio.run(_post(handler))
    assert err.value.reason == "malformed_http"


def test_content_length_and_read_to_close_bodies():
    handler, _ = serve([[b"HTTP/1.1 429 Too Many\r\nContent-Length: 4\r\n\r\nslow"]])
    assert asyncio.run(_post(handler))[0][:2] == (429, b"slow")
    handler, _ = serve([[b"HTTP/1.0 200 OK\r\n\r\nall of it", None]])
    assert asyncio.run(_post(handler))[0][:2] == (200, b"all of it")


@pytest.mark.parametrize(
    ("pieces", "reason"),
    [([CHUNKED + b"5\r\nhel", None], "connection_reset"),
     ([None], "connection_error"),
     ([b"garbage\r\n\r\n"], "malformed_http"),
     ([CHUNKED + b"zz\r\n"], "malformed_http")],
)  # fmt: skip
def test_broken_responses_raise_with_a_reason(pieces, reason):
    handler, _ = serve([pieces])
    with pytest.raises(HTTPStreamError) as exc:
        asyncio.run(_post(handler))
    assert exc.value.reason == reason


def test_idle_timeout_and_connect_error():
    handler, _ = serve([[CHUNKED + b"1\r\na\r\n"]], pause_s=5)
    with pytest.raises(HTTPStreamError) as exc:
        asyncio.run(_post(handler, timeout_s=0.2))
    assert exc.value.reason == "timeout"

    async def dead():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await RawHTTPPool("127.0.0.1", port).post("/", b"", {}, [], 1.0)

    with pytest.raises(HTTPStreamError) as exc:
        asyncio.run(dead())
    assert exc.value.reason == "connect_error"


def test_a_kept_alive_connection_closed_by_the_server_is_retried_once():
    ok = CHUNKED + b"2\r\nok\r\n0\r\n\r\n"
    calls = {"n": 0}

    async def handle(reader, writer):
        calls["n"] += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok)
        await writer.drain()
        if calls["n"] == 1:  # keep the first connection open, then drop it unannounced
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            writer.transport.abort()
            return
        writer.close()

    got = asyncio.run(_post(handle, n=2))
    assert [g[:2] for g in got] == [(200, b"ok"), (200, b"ok")]
    assert calls["n"] == 2


def test_compressed_bodies_are_refused_with_a_reason():
    gz = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\nxx"
    handler, _ = serve([[gz]])
    with pytest.raises(HTTPStreamError) as exc:
        asyncio.run(_post(handler))
    assert exc.value.reason == "unsupported_encoding"


def test_trailers_after_the_last_chunk_retire_the_connection():
    with_trailer = CHUNKED + b"2\r\nok\r\n0\r\nX-Checksum: 1\r\n\r\n"
    plain = CHUNKED + b"2\r\nok\r\n0\r\n\r\n"
    handler, state = serve([[with_trailer]])
    got = asyncio.run(_post(handler, n=1))
    assert got[0][:2] == (200, b"ok")
    handler, state = serve([[with_trailer], [plain]])
    got = asyncio.run(_post(handler, n=2))
    assert [g[:2] for g in got] == [(200, b"ok"), (200, b"ok")]
    assert state["conns"] == 2  # the second request did not reuse the connection
