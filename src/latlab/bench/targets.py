"""The HTTP target: any OpenAI-compatible server (the in-process ones are in local_targets).

The target fills one ``RequestRecord`` per request: ``send_ns`` right before the request
leaves, one ``chunk_ns`` per token arrival, ``end_ns`` at the last byte, and an error
reason instead of an exception when something goes wrong, so a run always continues.

The receive loop is minimal: it stores ``(perf_counter_ns(), bytes)`` per network read and
parses nothing until the stream has ended, so no JSON decoding ever sits between a byte
arriving and its timestamp. One pooled connection set serves all requests.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx

from latlab.bench import openai_reply
from latlab.bench.contract import BaseTarget, Finisher, GenOptions, TargetSpec
from latlab.bench.rawhttp import HTTPStreamError, RawHTTPPool
from latlab.bench.token_count import Seen, count_reply
from latlab.errors import TargetError
from latlab.metrics import RequestRecord
from latlab.workload import BenchRequest

# Set by latlab gateway on every generation response (hit, miss, coalesced, bypass).
CACHE_HEADER = "x-latlab-cache"


def _fail(rec: RequestRecord, reason: str, detail: object = None) -> None:
    if rec.end_ns is None:
        rec.end_ns = time.perf_counter_ns()
    rec.error = reason
    if isinstance(detail, BaseException):
        detail = f"{type(detail).__name__}: {detail}".rstrip(": ")
    text = str(detail or "").strip().splitlines()
    rec.error_detail = text[0][:200] if text else None


# ---------------------------------------------------------------------------- OpenAI HTTP


def _prompt_bytes(req: BenchRequest) -> int | None:
    """UTF-8 bytes of the text a request sent: no prompt can be more tokens than this (plus
    what a template adds); None when the prompt is not plain text."""
    if req.messages:
        parts = [m.get("content") for m in req.messages if isinstance(m, dict)]
        if not all(isinstance(p, str) for p in parts):
            return None
        return sum(len(p.encode()) for p in parts)  # type: ignore[union-attr]
    return len(req.prompt.encode()) if isinstance(req.prompt, str) else None


def _check_content_type(value: str, stream: bool, rec: RequestRecord) -> None:
    """A stream is ``text/event-stream``, a whole reply ``application/json``: a server that
    says otherwise is read anyway (proxies get this wrong) but flagged."""
    if rec.error is not None:
        return
    want = "text/event-stream" if stream else "application/json"
    got = value.split(";", 1)[0].strip().lower()
    if got != want:
        rec.reply_problems.setdefault("wrong content-type", f"{got or 'none'} for a "
                                      f"{'stream' if stream else 'reply'}, not {want}")  # fmt: skip


def _split_url(url: str) -> tuple[str, str | None]:
    """``http://h:p`` / ``.../v1`` / ``.../v1/completions`` -> (base ending in /v1, endpoint)."""
    u = url.rstrip("/")
    if not u.startswith(("http://", "https://")):
        raise TargetError(f"--url {url!r} must start with http:// or https://")
    for suffix in ("/chat/completions", "/completions"):
        if u.endswith(suffix):
            return u[: -len(suffix)], suffix
    if not u.endswith("/v1"):
        u += "/v1"
    return u, None


class OpenAITarget(BaseTarget):
    """An OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, Ollama, ``latlab serve``)."""

    remote = True

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api: str = "completions",
        api_key: str | None = None,
        *,
        tokenizer: Any | None = None,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 10.0,
        transport: str = "auto",
    ) -> None:
        if api not in ("completions", "chat"):
            raise TargetError(f"--api must be 'completions' or 'chat', not {api!r}")
        self.base, endpoint = _split_url(url)
        if endpoint is not None:
            api = "chat" if endpoint == "/chat/completions" else "completions"
        self.api = api
        self.endpoint = self.base + ("/chat/completions" if api == "chat" else "/completions")
        self.model = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.tokenizer = tokenizer
        self.name = f"{url} ({api})"
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._raw_headers: tuple[str, dict[str, str]] | None = None
        self._raw = self._raw_pool(transport, connect_timeout_s)
        self.transport = "raw" if self._raw is not None else "httpx"

    def _raw_pool(self, transport: str, connect_timeout_s: float) -> RawHTTPPool | None:
        """The light client for plain http:// (the default); httpx for https or on request."""
        if transport not in ("auto", "raw", "httpx"):
            raise TargetError(f"transport must be auto, raw or httpx, not {transport!r}")
        url = httpx.URL(self.endpoint)
        if transport == "httpx" or url.scheme != "http":
            if transport == "raw":
                raise TargetError("the raw transport speaks plain http:// only; use httpx")
            return None
        return RawHTTPPool(url.host, url.port or 80, connect_timeout_s)

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            self._client = httpx.AsyncClient(
                timeout=self._timeout, limits=limits, headers=self._headers(), trust_env=False
            )
        return self._client

    async def check(self) -> None:
        """One GET /models: unreachable servers and bad keys fail here, in one line."""
        try:
            resp = await self.client.get(self.base + "/models", timeout=5.0)
        except httpx.HTTPError as exc:
            raise TargetError(
                f"cannot reach {self.base}/models ({type(exc).__name__}: {exc or 'no reply'});"
                " is the server running and is --url right?"
            ) from None
        if resp.status_code in (401, 403):
            raise TargetError(f"{self.base} refused the API key (HTTP {resp.status_code}); "
                              "pass --api-key or set OPENAI_API_KEY")  # fmt: skip
        if self.model is not None:
            return
        try:
            self.model = resp.json()["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise TargetError(
                f"{self.base}/models lists no model (HTTP {resp.status_code}); pass --model"
            ) from None

    def spec(self) -> TargetSpec:
        """This target again, in a client worker process (same endpoint, model and key)."""
        kwargs = {"url": self.endpoint, "model": self.model, "api": self.api,
                  "api_key": self.api_key, "timeout_s": self.timeout_s,
                  "transport": self.transport}  # fmt: skip
        return TargetSpec(kind=type(self), kwargs=kwargs)

    async def prepare(self, users: int) -> None:
        """Before a closed-loop level: one open keep-alive connection per user."""
        if self._raw is not None:
            await self._raw.prewarm(users)

    def _payload(self, req: BenchRequest, opts: GenOptions) -> bytes:
        body: dict[str, Any] = {"model": self.model, "max_tokens": req.max_tokens,
                                "temperature": opts.temperature}  # fmt: skip
        if self.api == "chat":
            body["messages"] = req.messages or [{"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt
        if opts.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if opts.ignore_eos:  # vLLM/SGLang extension; other servers ignore unknown fields
            body["ignore_eos"] = True
        if opts.min_tokens:
            body["min_tokens"] = opts.min_tokens
        return json.dumps(body).encode()

    async def run(self, req: BenchRequest, rec: RequestRecord, opts: GenOptions) -> Finisher | None:
        content = self._payload(req, opts)
        reads: list[tuple[int, bytes]] = []
        head: dict[str, str] = {}
        if self._raw is not None:
            if not await self._run_raw(self._raw, content, reads, rec, head):
                return None
        elif not await self._run_httpx(content, reads, rec, head):
            return None
        parse = self._parse_stream if opts.stream else self._parse_whole

        def finish() -> None:
            parse(reads, rec, req)
            _check_content_type(head.get("content-type", ""), opts.stream, rec)

        return finish

    async def _run_raw(
        self,
        pool: RawHTTPPool,
        content: bytes,
        reads: list[tuple[int, bytes]],
        rec: RequestRecord,
        head: dict[str, str],
    ) -> bool:
        if self._raw_headers is None:
            path = httpx.URL(self.endpoint).raw_path.decode("ascii")
            self._raw_headers = (path, self._headers())
        path, headers = self._raw_headers
        headers = {**headers, "X-Request-Id": rec.request_id}  # servers log it; vLLM echoes it

        def on_head(_: int, response_headers: dict[str, str]) -> None:
            rec.gateway_cache = response_headers.get(CACHE_HEADER)
            head.update(response_headers)

        rec.send_ns = time.perf_counter_ns()
        try:
            status, rec.end_ns = await pool.post(
                path, content, headers, reads, self.timeout_s, on_head=on_head
            )
        except HTTPStreamError as exc:
            _fail(rec, exc.reason, str(exc))
            return False
        if status != 200:
            body = b"".join(d for _, d in reads)
            _fail(rec, f"http_{status}", body.decode("utf-8", "replace"))
            return False
        return True

    async def _run_httpx(
        self,
        content: bytes,
        reads: list[tuple[int, bytes]],
        rec: RequestRecord,
        head: dict[str, str],
    ) -> bool:
        now = time.perf_counter_ns
        rec.send_ns = now()
        try:
            rid = {"X-Request-Id": rec.request_id}
            async with self.client.stream(
                "POST", self.endpoint, content=content, headers=rid
            ) as resp:
                rec.gateway_cache = resp.headers.get(CACHE_HEADER)
                head["content-type"] = resp.headers.get("content-type", "")
                if resp.status_code != 200:
                    body = await resp.aread()
                    _fail(rec, f"http_{resp.status_code}", body.decode("utf-8", "replace"))
                    return False
                append = reads.append
                async for data in resp.aiter_bytes():  # hot loop: timestamp and store only
                    append((now(), data))
                rec.end_ns = now()
        except httpx.TimeoutException as exc:
            _fail(rec, "timeout", exc)
            return False
        except httpx.ConnectError as exc:
            _fail(rec, "connect_error", exc)
            return False
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            _fail(rec, "connection_reset" if reads else "connection_error", exc)
            return False
        except httpx.HTTPError as exc:
            _fail(rec, "http_error", exc)
            return False
        return True

    # -- after the stream: parse, count tokens (never inside the receive loop)
    def _parse_stream(
        self, reads: list[tuple[int, bytes]], rec: RequestRecord, req: BenchRequest
    ) -> None:
        try:
            reply = openai_reply.read_stream(reads)
        except openai_reply.ReplyError as exc:
            _fail(rec, exc.reason, str(exc))
            return
        if not reply.arrivals:
            _fail(rec, "no_content", "the response carried no generated tokens")
            return
        text = "".join(reply.texts)
        seen = Seen(text=text, text_chunks=sum(1 for t in reply.texts if t),
                    arrivals=len(reply.arrivals), max_tokens=req.max_tokens,
                    prompt_bytes=_prompt_bytes(req))  # fmt: skip
        count_reply(rec, reply, seen, self.tokenizer)
        if "data after [DONE]" in reply.problems and reply.done_ns is not None:
            rec.end_ns = reply.done_ns  # the reply ended there; what followed is not latency

    def _parse_whole(
        self, reads: list[tuple[int, bytes]], rec: RequestRecord, req: BenchRequest
    ) -> None:
        """Unstreamed: an E2E and a token count, and no TTFT, ITL or TPOT (never 0)."""
        try:
            text, reply = openai_reply.read_whole(b"".join(d for _, d in reads), self.api == "chat")
        except openai_reply.ReplyError as exc:
            _fail(rec, exc.reason, str(exc))
            return
        seen = Seen(text=text, text_chunks=1 if text else 0, arrivals=1,
                    max_tokens=req.max_tokens, prompt_bytes=_prompt_bytes(req))  # fmt: skip
        count_reply(rec, reply, seen, self.tokenizer)

    async def aclose(self) -> None:
        if self._raw is not None:
            self._raw.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
