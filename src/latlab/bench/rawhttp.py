"""A minimal HTTP/1.1 client on ``asyncio.Protocol``, for the bench's streaming hot path.

Why not httpx here: each streamed chunk through httpx passes h11, httpcore, anyio and httpx's
decoders, about 100 us of CPU on this machine; at 256 streams x 100 chunks/s that is more than
the client has, and every chunk waits behind the others, so latency is overstated. Here the
event loop calls ``data_received`` the moment a socket is readable: the timestamp is the first
thing taken, the body is de-chunked with two ``find`` calls, and nothing else happens until the
response ends. Keep-alive connections are pooled per host, so ``N`` users hold ``N`` sockets.

Scope: POST with a JSON body (what OpenAI-compatible servers take), chunked or Content-Length
or read-to-close bodies, over plain TCP or TLS (``ssl=`` a client context: the gateway's
``https://`` upstreams). Proxies and redirects go through httpx.

``latlab gateway`` forwards through the same client: its ``reads`` is an object with ``append``
and ``len`` that passes each read on at once, and ``on_head`` tells it the status and headers
as soon as they arrive.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import time
from collections import deque
from collections.abc import Callable

_now = time.perf_counter_ns


# Called with (status, lower-cased headers) once the response head has been parsed.
OnHead = Callable[[int, dict[str, str]], None]


class HTTPStreamError(Exception):
    """The connection broke or the server broke HTTP/1.1 framing; ``.reason`` says which."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class _Conn(asyncio.Protocol):
    """One keep-alive connection serving one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reset(None)

    def _reset(self, reads: list[tuple[int, bytes]] | None, on_head: OnHead | None = None) -> None:
        self.reads = reads
        self.on_head = on_head
        self.head = bytearray()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.mode = ""  # "chunked" | "length" | "close"
        self.left = 0  # bytes left in the current chunk (or the whole body for "length")
        self.cbuf = bytearray()
        self.last_ns = _now()
        self.done_fut: asyncio.Future[None] | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Kept: on Python 3.11 every asyncio.get_running_loop() is a getpid() system call.
        self.loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.mode == "close" and exc is None:
            self._finish()
            return
        fut = self.done_fut
        if fut is not None and not fut.done():
            fut.set_exception(HTTPStreamError(
                "connection_reset" if self.status else "connection_error",
                f"{type(exc).__name__}: {exc}" if exc else "server closed the connection",
            ))  # fmt: skip

    def data_received(self, data: bytes) -> None:
        ns = _now()
        self.last_ns = ns
        if self.reads is None:  # bytes nobody asked for (e.g. a late CRLF): ignore
            return
        if not self.status:
            self.head += data
            data = self._parse_head()
            if not data:
                return
        if self.mode == "chunked":
            if self.cbuf or self.left or not self._one_chunk(ns, data):
                self._chunked(ns, data)
        elif self.mode == "length":
            self.reads.append((ns, data))
            self.left -= len(data)
            if self.left <= 0:
                self._finish()
        else:
            self.reads.append((ns, data))

    # -- parsing
    def _parse_head(self) -> bytes:
        head = self.head.lstrip(b"\r\n")  # a previous response's trailing CRLF
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            return b""
        lines = bytes(head[:end]).decode("latin-1").split("\r\n")
        try:
            self.status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._fail("malformed_http", f"bad status line {lines[0][:60]!r}")
            return b""
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        rest = bytes(head[end + 4 :])
        encoding = self.headers.get("content-encoding", "identity").lower()
        if encoding not in ("identity", ""):
            self._fail("unsupported_encoding", f"Content-Encoding {encoding}: use httpx")
            return b""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self.mode = "chunked"
        elif "content-length" in self.headers:
            self.mode, self.left = "length", int(self.headers["content-length"])
        else:
            self.mode = "close"
        if self.on_head is not None:
            self.on_head(self.status, self.headers)
        if self.mode == "length" and self.left == 0:
            self._finish()
            return b""
        return rest

    def _one_chunk(self, ns: int, data: bytes) -> bool:
        """The usual read of a stream, exactly one whole ``SIZE CRLF payload CRLF``: sliced
        straight out of ``data`` (no buffer). False leaves anything else to ``_chunked``."""
        i = data.find(b"\r\n", 0, 20)
        if i <= 0:
            return False
        try:
            size = int(data[:i], 16)
        except ValueError:  # a chunk extension or a bad size line: the careful path decides
            return False
        end = i + 2 + size
        if size == 0 or len(data) != end + 2 or not data.endswith(b"\r\n"):
            return False
        self.reads.append((ns, data[i + 2 : end]))  # type: ignore[union-attr]
        return True

    def _chunked(self, ns: int, data: bytes) -> None:
        buf = self.cbuf
        buf += data
        reads = self.reads
        while buf:
            if self.left:
                take = min(self.left, len(buf))
                reads.append((ns, bytes(buf[:take])))  # type: ignore[union-attr]
                del buf[:take]
                self.left -= take
                continue
            i = buf.find(b"\r\n")
            if i < 0:
                return
            if i == 0:  # the CRLF that closes a chunk's payload
                del buf[:2]
                continue
            try:
                size = int(bytes(buf[:i]).split(b";", 1)[0], 16)
            except ValueError:
                self._fail("malformed_http", "bad chunk size line")
                return
            del buf[: i + 2]
            if size == 0:
                if not b"\r\n".startswith(bytes(buf[:2])):  # trailers: retire the socket
                    self.headers["connection"] = "close"
                self._finish()
                return
            self.left = size

    def _finish(self) -> None:
        if self.done_fut is not None and not self.done_fut.done():
            self.done_fut.set_result(None)

    def _fail(self, reason: str, detail: str) -> None:
        if self.done_fut is not None and not self.done_fut.done():
            self.done_fut.set_exception(HTTPStreamError(reason, detail))
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- used by the pool
    def start(
        self, payload: bytes, reads: list[tuple[int, bytes]], on_head: OnHead | None = None
    ) -> None:
        self._reset(reads, on_head)
        self.done_fut = self.loop.create_future()
        self.transport.write(payload)  # type: ignore[union-attr]

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and self.mode in ("chunked", "length")
            and self.headers.get("connection", "").lower() != "close"
        )

    def abort(self) -> None:
        self.closed = True
        fut, self.done_fut = self.done_fut, None
        if fut is not None and not fut.done():
            fut.cancel()  # nobody waits for it any more; a cancelled future logs nothing
        if self.transport is not None:
            self.transport.abort()


class RawHTTPPool:
    """Keep-alive connections to one ``host:port``; one in use per in-flight request."""

    def __init__(
        self,
        host: str,
        port: int,
        connect_timeout_s: float = 10.0,
        *,
        ssl: _ssl.SSLContext | None = None,
        host_header: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.ssl = ssl  # TLS to the server, verified as the context says
        self.host_header = host_header or f"{host}:{port}"
        self._idle: deque[_Conn] = deque()

    async def _acquire(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        tls = {"ssl": self.ssl, "server_hostname": self.host} if self.ssl is not None else {}
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Conn, self.host, self.port, **tls), self.connect_timeout_s
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise HTTPStreamError("connect_error", f"{type(exc).__name__}: {exc}") from None
        return conn

    async def prewarm(self, n: int) -> int:
        """Open up to ``n`` idle keep-alive connections now, so TCP setup stays out of TTFT."""
        missing = max(0, n - len(self._idle))
        opened = await asyncio.gather(*(self._acquire() for _ in range(missing)),
                                      return_exceptions=True)  # fmt: skip
        conns = [c for c in opened if isinstance(c, _Conn)]
        self._idle.extend(conns)
        return len(conns)

    async def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str],
        reads: list[tuple[int, bytes]],
        timeout_s: float,
        on_head: OnHead | None = None,
    ) -> tuple[int, int]:
        """POST ``body``; append ``(arrival_ns, body_bytes)`` to ``reads``.

        Returns ``(status, last_byte_ns)``. ``timeout_s`` is an idle timeout: the request
        fails when no byte arrives for that long. Raises HTTPStreamError with a ``.reason``.
        """
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host_header}",
                f"Content-Length: {len(body)}"]  # fmt: skip
        head += [f"{k}: {v}" for k, v in headers.items()]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (1, 2):
            reused = bool(self._idle)
            conn = await self._acquire()
            conn.start(payload, reads, on_head)
            try:
                await self._wait(conn, timeout_s)
            except HTTPStreamError as exc:
                conn.abort()
                # A kept-alive connection the server closed just as we sent: the request
                # never reached it, so one retry on a fresh connection is safe (as in httpx).
                if attempt == 1 and reused and exc.reason == "connection_error" and not reads:
                    continue
                raise
            except BaseException:  # timeout, cancellation: never reuse the connection
                conn.abort()
                raise
            finally:
                conn.reads = None
            break
        if conn.reusable:
            self._idle.append(conn)
        else:
            conn.abort()
        return conn.status, conn.last_ns

    @staticmethod
    async def _wait(conn: _Conn, timeout_s: float) -> None:
        """Until the response ends; a timer (re-armed, never per read) fails it when idle.

        One ``call_later`` per request instead of ``asyncio.wait(timeout=)``, whose set, waiter
        future and callbacks cost a measurable share of the gateway's per-request CPU.
        """
        done = conn.done_fut
        if done is None:
            raise HTTPStreamError("connection_error", "connection closed before the request")
        loop = conn.loop

        def check() -> None:
            nonlocal timer
            if done.done():
                return
            idle_s = (_now() - conn.last_ns) / 1e9
            if idle_s >= timeout_s:
                done.set_exception(HTTPStreamError("timeout", f"no byte for {timeout_s:g} s"))
            else:
                timer = loop.call_later(timeout_s - idle_s, check)

        timer = loop.call_later(timeout_s, check)
        try:
            await done  # raises the stream's error, if any
        finally:
            timer.cancel()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().abort()
