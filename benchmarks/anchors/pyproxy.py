"""An HTTP proxy in one Python process (uvloop) doing the least a gateway must: the floor of
a Python gateway that reads requests.

Each request is parsed (httptools), its JSON body decoded and checked (a JSON object naming a
model; with ``--checked`` also latlab serve's depth pass and request validation, the same 400
bodies), and written to the upstream over a kept-alive connection from a pool. The upstream's
response is not parsed for the client: its bytes are written to the client as read, head and
chunk framing included, and fed to a response parser only to learn where the response ends (so
its connection can return to the pool). Beside pyrelay (bytes only, nothing parsed) and nginx
(one HTTP hop in C), it tells what reading requests costs in Python, and so how much of the
gateway's added latency its design, not its language, adds.

Flow control both ways; an unreachable upstream answers 502; an upstream that drops mid-answer
closes the client's connection. SIGTERM or SIGINT ends it. ``--request-cpu-us`` and
``--chunk-cpu-us`` add that much spinning to each request and each upstream read: what a
gateway may spend on its own work before the added latency passes a goal.

    .venv/bin/python benchmarks/anchors/pyproxy.py --upstream 127.0.0.1:8000 --port 8200 [--checked]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import time
from collections import deque
from typing import Any

import httptools

READY = "pyproxy: ready at "
CHAT_PATH = b"/v1/chat/completions"


def _nodelay(transport: asyncio.BaseTransport) -> None:
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _burn(ns: int) -> None:
    """Spin for ``ns`` nanoseconds of the loop's time (the budget study's stand-in for work)."""
    if ns:
        end = time.perf_counter_ns() + ns
        while time.perf_counter_ns() < end:
            pass


def _answer(status: str, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        len(body),
        body,
    )


def _bad_request(message: str) -> bytes:
    body = {"error": {"message": message, "type": "invalid_request_error"}}
    return _answer("400 Bad Request", json.dumps(body).encode())


class _Checker:
    """The request checks: JSON object with a model; ``checked`` adds latlab serve's."""

    def __init__(self, checked: bool) -> None:
        self.checked = checked
        if checked:
            from latlab.serve import protocol
            from latlab.serve.guard import json_depth_exceeds

            self._too_deep = json_depth_exceeds
            self._parse, self._refusal = protocol.parse_request, protocol.RequestError
            self._models = {CHAT_PATH: protocol.ChatCompletionRequest}
            self._default = protocol.CompletionRequest

    def problem(self, url: bytes, body: bytes) -> bytes | None:
        """The 400 answer for a bad body, or None."""
        if self.checked:
            if self._too_deep(body, 32):
                return _bad_request("the request body nests too deep")
            try:
                self._parse(self._models.get(url, self._default), body)
            except self._refusal as exc:
                return _bad_request(str(exc))
        try:
            request = json.loads(body)
        except ValueError:
            return _bad_request("the request body is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            return _bad_request("the request body must be a JSON object naming a model")
        return None


class _Paired(asyncio.Protocol):
    """Flow control between a connection and its peer: while this side's write buffer is
    full, the peer (whose reads are written here) stops reading."""

    transport: asyncio.Transport | None

    def peer(self) -> _Paired | None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        peer = self.peer()
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer()
        if peer is not None and peer.transport is not None:
            peer.transport.resume_reading()


class _Upstream(_Paired):
    """One pooled upstream connection: the response goes to ``client`` as read."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.client: _Client | None = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        _burn(self.proxy.chunk_cpu_ns)
        if client is not None and client.transport is not None:
            client.transport.write(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if self.parser.should_keep_alive():
            self.proxy.idle.append(self)
        else:
            self.transport.close()  # type: ignore[union-attr]
        if client is not None:
            client.upstream = None
            client.next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.proxy.idle:
            self.proxy.idle.remove(self)
        client, self.client = self.client, None
        if client is not None and client.transport is not None:
            client.transport.close()  # mid-answer: the client cannot get a whole response

    def peer(self) -> _Paired | None:
        return self.client


class _Client(_Paired):
    """One client connection: requests parsed and answered in order."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.queue: deque[tuple[bytes, bytes, bytes]] = deque()  # pipelined requests
        self.upstream: _Upstream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(_bad_request("malformed HTTP request"))  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]

    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.queue.append((self.parser.get_method(), self.url, b"".join(self.body)))
        if self.upstream is None:
            self.next_request()

    def next_request(self) -> None:
        """Answer the oldest waiting request (the previous answer is complete)."""
        while self.queue and self.transport is not None and not self.transport.is_closing():
            method, url, body = self.queue.popleft()
            if url == b"/health":
                self.transport.write(_answer("200 OK", b'{"status": "ok"}'))
                continue
            problem = self.proxy.checker.problem(url, body) if method == b"POST" else None
            if problem is not None:
                self.transport.write(problem)
                continue
            _burn(self.proxy.request_cpu_ns)
            self.proxy.forward(self, method, url, body)
            return

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()  # its answer has nowhere to go

    def peer(self) -> _Paired | None:
        return self.upstream


class Proxy:
    """The upstream address, its idle kept-alive connections and the request checks."""

    def __init__(
        self, host: str, port: int, checked: bool, *, request_cpu_us: float = 0,
        chunk_cpu_us: float = 0,
    ) -> None:  # fmt: skip
        self.target = (host, port)
        self.request_cpu_ns = int(request_cpu_us * 1000)  # extra work: the budget study
        self.chunk_cpu_ns = int(chunk_cpu_us * 1000)
        self.idle: list[_Upstream] = []
        self.checker = _Checker(checked)
        self.connecting: set[asyncio.Task[None]] = set()

    def forward(self, client: _Client, method: bytes, url: bytes, body: bytes) -> None:
        data = b"%s %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n" % (
            method, url, self.target[0].encode(), self.target[1],
        ) + b"content-length: %d\r\n\r\n%s" % (len(body), body)  # fmt: skip
        while self.idle:
            up = self.idle.pop()
            if up.transport is not None and not up.transport.is_closing():
                up.client, client.upstream = client, up
                up.transport.write(data)
                return
        task = asyncio.ensure_future(self._connect(client, data))
        self.connecting.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, client: _Client, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: _Upstream(self), *self.target)
        except OSError as exc:
            if client.transport is not None:
                body = {"error": {"message": f"upstream unreachable: {exc}", "type": "upstream"}}
                client.transport.write(_answer("502 Bad Gateway", json.dumps(body).encode()))
                client.next_request()
            return
        if client.transport is None:
            up.transport.close()  # type: ignore[union-attr]
            return
        up.client, client.upstream = client, up
        up.transport.write(data)  # type: ignore[union-attr]


async def serve(upstream: str, port: int, checked: bool, burn: tuple[float, float]) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    host, _, up_port = upstream.rpartition(":")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before listening: a stop never comes too early
        loop.add_signal_handler(sig, stop.set)
    proxy = Proxy(host, int(up_port), checked, request_cpu_us=burn[0], chunk_cpu_us=burn[1])
    server = await loop.create_server(lambda: _Client(proxy), "127.0.0.1", port)
    print(f"{READY}http://127.0.0.1:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: Any = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--checked", action="store_true",
                   help="check bodies as latlab serve does (depth pass, validation)")  # fmt: skip
    p.add_argument(
        "--request-cpu-us",
        type=float,
        default=0.0,
        help="spin this long per request before forwarding it (a work budget study)",
    )
    p.add_argument("--chunk-cpu-us", type=float, default=0.0,
                   help="spin this long per upstream read before writing it on")  # fmt: skip
    args = p.parse_args(argv)
    burn = (args.request_cpu_us, args.chunk_cpu_us)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.upstream, args.port, args.checked, burn))
    else:
        uvloop.run(serve(args.upstream, args.port, args.checked, burn))


if __name__ == "__main__":
    main()
