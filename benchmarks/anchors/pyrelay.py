"""A layer-4 relay in one Python process (uvloop): the floor of Python in a forwarding path.

Each client connection gets its own upstream connection; bytes are copied both ways as they are
read, nothing is parsed (no HTTP, no SSE, no cache, keys or routing). What it costs per chunk is
what one event loop pays to move bytes between two sockets, the same system calls any proxy
makes, with a few Python calls around them; benchmarks/gateway.py runs it beside nginx (the
floor of one HTTP hop in C) so the gateway's added latency reads against both floors.

Flow control both ways: a side whose peer cannot take more (its write buffer above the high
mark) stops reading until the peer drains. A side that ends (EOF or reset) ends the other.

    .venv/bin/python benchmarks/anchors/pyrelay.py --upstream 127.0.0.1:8000 --port 8200
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

READY = "pyrelay: ready at "


class _Side(asyncio.Protocol):
    """One socket of a pair: what it reads goes to ``peer``'s transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.held: list[bytes] = []  # read before the peer's connection existed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.held.append(data)
        else:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.connection_lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()
        if self.transport is not None:
            self.transport.close()

    # This side's write buffer is full (the peer's reads are written here): stop reading the
    # peer until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def _pair(client: _Side, upstream: _Side) -> None:
    client.peer, upstream.peer = upstream, client
    for data in client.held:
        upstream.transport.write(data)  # type: ignore[union-attr]
    client.held.clear()


class _Client(_Side):
    """The accepted side: opens its upstream connection, then relays."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self._target = (host, port)
        self._connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Side, *self._target)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None or self.transport.is_closing():
            upstream.transport.close()  # type: ignore[union-attr]
            return
        _pair(self, upstream)


async def relay(upstream: str, port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    host, _, up_port = upstream.rpartition(":")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before listening: a stop never comes too early
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: _Client(host, int(up_port)), "127.0.0.1", port)
    print(f"{READY}http://127.0.0.1:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT to relay to")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(relay(args.upstream, args.port))
    else:
        uvloop.run(relay(args.upstream, args.port))


if __name__ == "__main__":
    main()
