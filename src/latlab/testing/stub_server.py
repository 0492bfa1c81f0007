"""A deterministic OpenAI-compatible streaming server with a known TTFT and ITL.

It exists so a benchmark client can be checked against the truth: the server waits ``ttft_s``
after reading a request, then writes ``chunks`` content chunks ``itl_s`` apart, each carrying
``tokens_per_chunk`` tokens, on an absolute schedule (sleep drift never accumulates). It records
its own time from reading a request to writing its first content chunk, so a client's TTFT can
be compared with what the server actually did. Fault modes reproduce what real servers do wrong.

Built on raw asyncio streams (no FastAPI) so it stays light next to the client it measures.
Use it as ``with StubServer(ttft_s=0.05, itl_s=0.01) as url: ...`` (url ends in ``/v1``) or as
``python -m latlab.testing.stub_server --port 8000 --ttft-ms 50 --itl-ms 10 --chunks 64``.
Extra endpoints: ``GET /stub/stats`` (the server's own timings as JSON), ``POST /stub/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("500", "429", "reset", "malformed", "no_done", "hang")
# Protocol lies a client must notice (the reply still parses): a token chunk after [DONE], a
# stream sent as text/plain, a token chunk after the one that finished, usage that shrinks.
LIES = ("after_done", "content_type", "after_finish", "usage_backwards")
_WORD = " tok"  # each streamed token is this word: one token in most tokenizers


@dataclass(slots=True)
class StubConfig:
    ttft_s: float = 0.05
    itl_s: float = 0.01
    tokens_per_chunk: int = 1
    chunks: int | None = None  # None: ceil(max_tokens / tokens_per_chunk)
    default_max_tokens: int = 16
    fault: str | None = None  # one of FAULTS
    fault_every: int = 1  # fault every Nth request (1 = all)
    fault_after_chunks: int = 2  # reset/malformed happen after this many content chunks
    send_usage: bool = True  # honour stream_options.include_usage
    model: str = "stub-model"
    # What real servers do that a client must read right: content chunks sent with empty text
    # (their token decodes to nothing; still tokens in usage), a closing chunk after the last
    # token (empty delta, finish_reason, no token: as OpenAI sends), and a usage that lies.
    empty_chunks: tuple[int, ...] = ()  # indices of content chunks sent with empty text
    closing_chunk: bool = False
    usage_override: dict[str, Any] | None = None  # reported instead of the true usage
    lie: str | None = None  # one of LIES
    # Serve at most this many generations at once; the rest wait in arrival order, and their
    # TTFT schedule starts when a slot frees (a server with K sequences of capacity).
    max_concurrent: int | None = None
    # /v1/* answers 401 unless "Authorization: Bearer <api_key>" (an upstream that needs a key).
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; choose one of {', '.join(FAULTS)}")
        if self.lie is not None and self.lie not in LIES:
            raise ValueError(f"unknown lie {self.lie!r}; choose one of {', '.join(LIES)}")
        if self.tokens_per_chunk < 1:
            raise ValueError("tokens_per_chunk must be >= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    first_chunk_ms: list[float] = field(default_factory=list)
    # (X-Request-Id, request read, first chunk written) in perf_counter_ns: CLOCK_MONOTONIC,
    # the same clock as a client's on this machine, so a client can pair them with its own.
    first_chunk_ns: list[tuple[str, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_first_chunk(self, request_id: str, t_read_ns: int, t_write_ns: int) -> None:
        with self.lock:
            self.first_chunk_ms.append((t_write_ns - t_read_ns) / 1e6)
            self.first_chunk_ns.append((request_id, t_read_ns, t_write_ns))

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            vals = sorted(self.first_chunk_ms)
            return {"requests": self.requests, "first_chunk_ms": vals,
                    "first_chunk_ns": list(self.first_chunk_ns)}  # fmt: skip


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _Handler:
    """Serves one connection (HTTP/1.1 keep-alive, chunked transfer encoding)."""

    def __init__(self, server: StubServer) -> None:
        self.srv = server
        self.cfg = server.config

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await self._read_request(reader)
                if req is None:
                    break
                t_read = time.perf_counter_ns()
                method, path, body, request_id, auth = req
                if self._refused(path, auth):
                    keep = await self._send_json(writer, 401, {"error": {"message": "bad key"}})
                else:
                    keep = await self._dispatch(method, path, body, writer, (request_id, t_read))
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _refused(self, path: str, authorization: str) -> bool:
        key = self.cfg.api_key
        return key is not None and path.startswith("/v1/") and authorization != f"Bearer {key}"

    async def _read_request(
        self, reader: asyncio.StreamReader
    ) -> tuple[str, str, bytes, str, str] | None:
        """(method, path, body, X-Request-Id, Authorization) of the next request; None at end."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = 0
        request_id = auth = ""
        for line in lines[1:]:
            low = line.lower()
            if low.startswith("content-length:"):
                length = int(line.split(":", 1)[1])
            elif low.startswith("x-request-id:"):
                request_id = line.split(":", 1)[1].strip()
            elif low.startswith("authorization:"):
                auth = line.split(":", 1)[1].strip()
        body = await reader.readexactly(length) if length else b""
        return method, path.split("?", 1)[0], body, request_id, auth

    async def _dispatch(
        self, method: str, path: str, body: bytes, w: asyncio.StreamWriter, read: tuple[str, int]
    ) -> bool:
        if method == "GET" and path in ("/v1/models", "/models"):
            models = {"object": "list", "data": [{"id": self.cfg.model, "object": "model"}]}
            return await self._send_json(w, 200, models)
        if method == "GET" and path in ("/health", "/stub/stats"):
            return await self._send_json(w, 200, self.srv.stats())
        if method == "POST" and path == "/stub/reset":
            self.srv.reset_stats()
            return await self._send_json(w, 200, {"ok": True})
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            try:
                payload = json.loads(body or b"{}")
            except json.JSONDecodeError:
                return await self._send_json(w, 400, {"error": {"message": "bad json"}})
            return await self._generate(payload, path.endswith("chat/completions"), w, read)
        return await self._send_json(w, 404, {"error": {"message": f"no route {path}"}})

    async def _send_json(self, w: asyncio.StreamWriter, status: int, obj: Any) -> bool:
        body = _json_bytes(obj)
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error"}.get(status, "Error")  # fmt: skip
        w.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await w.drain()
        return True

    async def _generate(
        self, payload: dict[str, Any], chat: bool, w: asyncio.StreamWriter, read: tuple[str, int]
    ) -> bool:
        slots = self.srv.slots
        if slots is None:
            return await self._respond(payload, chat, w, read, read[1])
        async with slots:  # FIFO: asyncio.Semaphore wakes waiters in arrival order
            with self.srv.serving():
                return await self._respond(payload, chat, w, read, time.perf_counter_ns())

    async def _respond(
        self,
        payload: dict[str, Any],
        chat: bool,
        w: asyncio.StreamWriter,
        read: tuple[str, int],
        t_start: int,
    ) -> bool:
        """Answer one generation; its TTFT/ITL schedule counts from ``t_start`` (a free slot)."""
        cfg = self.cfg
        n = self.srv.next_request_number()
        fault = cfg.fault if cfg.fault and n % cfg.fault_every == 0 else None
        if fault in ("500", "429"):
            await self._send_json(w, int(fault), {"error": {"message": f"stub fault {fault}"}})
            return True
        max_tokens = int(payload.get("max_tokens") or payload.get("max_completion_tokens") or 0)
        max_tokens = max_tokens or cfg.default_max_tokens
        k = cfg.tokens_per_chunk
        n_chunks = cfg.chunks if cfg.chunks is not None else math.ceil(max_tokens / k)
        prompt_tokens = _count_prompt_words(payload, chat)
        if not payload.get("stream"):
            return await self._non_stream(w, chat, t_start, n_chunks, k, prompt_tokens)
        usage = cfg.send_usage and (payload.get("stream_options") or {}).get("include_usage")
        return await self._stream(
            w, chat, read, t_start, n_chunks, k, prompt_tokens, bool(usage), fault
        )

    async def _non_stream(
        self, w: asyncio.StreamWriter, chat: bool, t_read: int, n_chunks: int, k: int, pt: int
    ) -> bool:
        done = t_read + int((self.cfg.ttft_s + (n_chunks - 1) * self.cfg.itl_s) * 1e9)
        await _sleep_until(done)
        text = _WORD * (n_chunks * k)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": "length"}  # fmt: skip
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length"}
        usage = self.cfg.usage_override or {"prompt_tokens": pt, "completion_tokens": n_chunks * k,
                                            "total_tokens": pt + n_chunks * k}  # fmt: skip
        obj = {"id": "cmpl-stub", "object": "chat.completion" if chat else "text_completion",
               "model": self.cfg.model, "choices": [choice]}  # fmt: skip
        if self.cfg.send_usage:
            obj["usage"] = usage
        return await self._send_json(w, 200, obj)

    async def _stream(
        self,
        w: asyncio.StreamWriter,
        chat: bool,
        read: tuple[str, int],
        t_start: int,
        n_chunks: int,
        k: int,
        pt: int,
        usage: bool,
        fault: str | None,
    ) -> bool:
        cfg = self.cfg
        request_id, t_read = read
        ctype = b"text/plain" if cfg.lie == "content_type" else b"text/event-stream"
        w.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        obj_name = "chat.completion.chunk" if chat else "text_completion"
        if chat:  # real servers send a role-only chunk first; it must not count as TTFT
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            self._event(w, {"id": "s", "object": obj_name, "choices": [role]})
            await w.drain()
        if fault == "hang":
            await asyncio.sleep(3600)
            return False
        mid, last_chunk = _content_frames(chat, k)  # built once: the stub must stay light
        if cfg.lie == "usage_backwards":  # a running usage that later shrinks
            u = {"prompt_tokens": pt, "completion_tokens": n_chunks * k + 5}
            self._event(w, {"id": "s", "object": obj_name, "choices": [], "usage": u})
        empty_mid, empty_last = _content_frames(chat, k, empty=True)
        for i in range(n_chunks):
            await _sleep_until(t_start + int((cfg.ttft_s + i * cfg.itl_s) * 1e9))
            if fault in ("reset", "malformed") and i == cfg.fault_after_chunks:
                if fault == "malformed":
                    self._raw_event(w, b"data: {this is not json\n\n")
                    await w.drain()
                    continue
                _abort(w)
                return False
            if i in cfg.empty_chunks:
                w.write(empty_last if i == n_chunks - 1 else empty_mid)
            else:
                w.write(last_chunk if i == n_chunks - 1 else mid)
            await w.drain()
            if i == 0:
                self.srv.record_first_chunk(request_id, t_read, time.perf_counter_ns())
        return await self._end_stream(w, chat, obj_name, mid, n_chunks * k, pt, usage, fault)

    async def _end_stream(
        self,
        w: asyncio.StreamWriter,
        chat: bool,
        obj_name: str,
        mid: bytes,
        tokens: int,
        pt: int,
        usage: bool,
        fault: str | None,
    ) -> bool:
        """After the content: closing chunk, usage, [DONE] and the lies configured around them."""
        cfg = self.cfg
        if cfg.lie == "after_finish":
            w.write(mid)
        if cfg.closing_chunk:
            closing = {"index": 0, "finish_reason": "length",
                       **({"delta": {}} if chat else {"text": ""})}  # fmt: skip
            self._event(w, {"id": "s", "object": obj_name, "choices": [closing]})
        if usage:
            u = cfg.usage_override or {"prompt_tokens": pt, "completion_tokens": tokens,
                                       "total_tokens": pt + tokens}  # fmt: skip
            self._event(w, {"id": "s", "object": obj_name, "choices": [], "usage": u})
        if fault == "no_done":
            w.write(b"0\r\n\r\n")
            await w.drain()
            return True
        self._raw_event(w, b"data: [DONE]\n\n")
        if cfg.lie == "after_done":
            w.write(mid)
        w.write(b"0\r\n\r\n")
        await w.drain()
        return True

    def _event(self, w: asyncio.StreamWriter, obj: Any) -> None:
        self._raw_event(w, b"data: " + _json_bytes(obj) + b"\n\n")

    @staticmethod
    def _raw_event(w: asyncio.StreamWriter, data: bytes) -> None:
        w.write(b"%x\r\n%s\r\n" % (len(data), data))


@functools.lru_cache(maxsize=64)
def _content_frames(chat: bool, k: int, empty: bool = False) -> tuple[bytes, bytes]:
    """Chunked-encoding frames of a middle and of the last content chunk."""
    frames = []
    text = "" if empty else _WORD * k
    for finish in (None, "length"):
        if chat:
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            obj = {"id": "s", "object": "chat.completion.chunk", "choices": [choice]}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
            obj = {"id": "s", "object": "text_completion", "choices": [choice]}
        data = b"data: " + _json_bytes(obj) + b"\n\n"
        frames.append(b"%x\r\n%s\r\n" % (len(data), data))
    return frames[0], frames[1]


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed: the stub must not be the bottleneck of what it measures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _abort(w: asyncio.StreamWriter) -> None:
    """Reset the connection mid-stream (RST, not a clean close)."""
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
    w.transport.abort()


async def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.perf_counter_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def _count_prompt_words(payload: dict[str, Any], chat: bool) -> int:
    if chat:
        msgs = payload.get("messages") or []
        return sum(len(str(m.get("content", "")).split()) for m in msgs if isinstance(m, dict))
    prompt = payload.get("prompt", "")
    if isinstance(prompt, list):
        return (
            len(prompt) if prompt and isinstance(prompt[0], int) else len(" ".join(prompt).split())
        )
    return len(str(prompt).split())


class StubServer:
    """The stub on 127.0.0.1 (free port by default), in a background thread with its own loop.

    ``with StubServer(ttft_s=0.05, itl_s=0.01, tokens_per_chunk=2) as url:`` gives the base URL
    (``http://127.0.0.1:PORT/v1``); ``.stats()`` gives the server's own first-chunk times.
    """

    def __init__(
        self,
        config: StubConfig | None = None,
        *,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        self.config = config or StubConfig(**kwargs)
        self.port = port
        self.tls = tls  # a server context: the stub speaks HTTPS
        self._stats = _Stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._counter = 0
        self.slots: asyncio.Semaphore | None = None  # max_concurrent generations, in its loop
        self._serving = 0
        self._peak_serving = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    # -- stats
    def next_request_number(self) -> int:
        self._counter += 1
        self._stats.requests = self._counter
        return self._counter

    def record_first_chunk(self, request_id: str, t_read_ns: int, t_write_ns: int) -> None:
        self._stats.add_first_chunk(request_id, t_read_ns, t_write_ns)

    @contextlib.contextmanager
    def serving(self) -> Any:
        """Counts generations holding a slot (the peak shows max_concurrent was honoured)."""
        self._serving += 1
        self._peak_serving = max(self._peak_serving, self._serving)
        try:
            yield
        finally:
            self._serving -= 1

    def stats(self) -> dict[str, Any]:
        return {**self._stats.snapshot(), "peak_concurrent": self._peak_serving}

    def reset_stats(self) -> None:
        with self._stats.lock:
            self._stats.first_chunk_ms.clear()
            self._stats.first_chunk_ns.clear()
            self._stats.requests = 0
            self._counter = 0
            self._peak_serving = 0

    # -- lifecycle
    async def _start(self) -> None:
        if self.config.max_concurrent is not None:
            self.slots = asyncio.Semaphore(self.config.max_concurrent)
        handler = _Handler(self)
        self._server = await asyncio.start_server(
            handler.serve, "127.0.0.1", self.port, backlog=4096, limit=1 << 20, ssl=self.tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _run(self) -> None:
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._start())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run, name="latlab-stub", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("stub server did not start within 10 s")
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def stub_process(config: StubConfig | None = None, **kwargs: Any) -> Iterator[str]:
    """The stub in its own process (its own GIL, so a client in this process cannot delay its
    schedule); yields the base URL and stops the process group on exit."""
    from latlab.procs import ManagedProcess, ProcessSpec, free_port

    cfg = config or StubConfig(**kwargs)
    port = free_port()
    argv = [sys.executable, "-m", "latlab.testing.stub_server", "--port", str(port),
            "--ttft-ms", str(cfg.ttft_s * 1e3), "--itl-ms", str(cfg.itl_s * 1e3),
            "--tokens-per-chunk", str(cfg.tokens_per_chunk), "--fault-every",
            str(cfg.fault_every), "--model", cfg.model]  # fmt: skip
    for flag, value in (("--chunks", cfg.chunks), ("--fault", cfg.fault),
                        ("--max-concurrent", cfg.max_concurrent)):  # fmt: skip
        if value is not None:
            argv += [flag, str(value)]
    with ManagedProcess(ProcessSpec(argv=argv, name="stub server")) as proc:
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=30)
        yield f"http://127.0.0.1:{port}/v1"


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground until Ctrl-C (for external tools such as vllm bench serve)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--chunks", type=int, default=None, help="default: from max_tokens")
    p.add_argument("--fault", choices=FAULTS, default=None)
    p.add_argument("--fault-every", type=int, default=1)
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="serve at most N generations at once; the rest queue (FIFO)")  # fmt: skip
    p.add_argument("--model", default="stub-model")
    a = p.parse_args(argv)
    cfg = StubConfig(ttft_s=a.ttft_ms / 1e3, itl_s=a.itl_ms / 1e3,
                     tokens_per_chunk=a.tokens_per_chunk, chunks=a.chunks, fault=a.fault,
                     fault_every=a.fault_every, model=a.model,
                     max_concurrent=a.max_concurrent)  # fmt: skip
    srv = StubServer(cfg, port=a.port)
    url = srv.start()
    print(f"stub server ready at {url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
