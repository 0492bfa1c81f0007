"""``latlab gateway``'s ASGI app: the order every generation request goes through.

1. the API key names the tenant (401 without a valid one, when keys are configured);
2. the body is validated by latlab serve's own request models, so a malformed request gets the
   same 400 body as ``latlab serve`` and is never forwarded;
3. the tenant's requests/min and tokens/min (429 with ``Retry-After``);
4. trimming to the token budget, said in response headers;
5. the response cache (deterministic requests only, per tenant) and coalescing with an identical
   request in flight;
6. routing to an upstream, one retry elsewhere before the first byte, and streaming back.

Every generation response carries ``x-latlab-cache: hit|miss|coalesced|bypass``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from latlab.gateway import asgi
from latlab.gateway.cache import ResponseCache, make_store
from latlab.gateway.cachekey import CacheControl, cache_key, is_deterministic
from latlab.gateway.config import GatewayConfig
from latlab.gateway.flights import Call, Flight, Flights, UpstreamFailure, has_content
from latlab.gateway.grouping import prefix_key, prompt_text
from latlab.gateway.keys import ANONYMOUS, KeyRing, Tenant, load_keys
from latlab.gateway.limits import MemoryLimiter, RedisLimiter
from latlab.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from latlab.gateway.recording import Recording
from latlab.gateway.relay import Relay
from latlab.gateway.routing import make_router
from latlab.gateway.saturation import LoopLagMonitor
from latlab.gateway.trim import TrimError, Trimmer
from latlab.gateway.upstreams import Upstream, UpstreamSet
from latlab.serve.guard import HEAD_NS_KEY, PARSED_BODY_KEY
from latlab.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
    error_body,
    parse_request,
)

log = logging.getLogger("latlab.gateway")
ENDPOINTS = {
    "/v1/completions": ("/completions", CompletionRequest),
    "/v1/chat/completions": ("/chat/completions", ChatCompletionRequest),
}
CACHE_HEADER = "x-latlab-cache"
REPLAY_HEADER = "x-latlab-cache-replay"
_DEFAULT_MAX_TOKENS = 256  # load estimate for a request that does not say
_now = time.perf_counter_ns
_ID_PREFIX = f"gw-{uuid.uuid4().hex[:12]}-"  # this process's; a counter makes each id unique
_ids = itertools.count(1)


def _request_id() -> str:
    """An X-Request-Id for a request without one (no random bytes, no system call, per request)."""
    return f"{_ID_PREFIX}{next(_ids)}"


@dataclass(kw_only=True, slots=True)
class _Plan:
    """What the cache and coalescing may do for one request."""

    key: str | None = None
    read: bool = False
    write: bool = False
    coalesce: bool = False
    control: CacheControl = field(default_factory=CacheControl)


@dataclass(kw_only=True, slots=True)
class GenerationRequest:
    """One accepted generation request, as the later steps need it."""

    endpoint: str  # "/completions" or "/chat/completions"
    arrival: int  # perf_counter_ns when it arrived (the gateway's TTFT starts here)
    headers: dict[str, str]
    tenant: Tenant
    body: dict[str, Any]
    raw: bytes  # what is sent upstream (re-encoded only when trimming changed it)
    extra: dict[str, str]  # response headers trimming adds
    prompt: str | list[int] | None
    plan: _Plan

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens: exact for token ids, else 4 characters a token."""
        prompt = self.prompt or ()
        return len(prompt) if isinstance(prompt, list) else len(prompt) // 4


class FirstContent:
    """The gateway's TTFT, observed once: when the first piece with content is written."""

    __slots__ = ("arrival", "flight", "histogram", "seen")

    def __init__(self, flight: Flight, histogram: Any, arrival: int) -> None:
        self.flight, self.histogram, self.arrival = flight, histogram, arrival
        self.seen = False

    def check(self, written: int) -> None:
        if not self.seen and 0 <= self.flight.first_content < written:
            self.seen = True
            self.histogram.observe((_now() - self.arrival) / 1e9)


async def _relayed(
    flight: Flight, client: asgi.ClientWatch, send: Any, sent: int, on_content: Any
) -> int:
    """The flight writes to this client until it ends, a send stalls or the client leaves;
    the pieces written by then (latlab.gateway.relay)."""
    relay = Relay(send, sent, on_content)
    flight.attach(relay)
    try:
        await client.wait(relay.wake)
    finally:
        flight.detach(relay)
    await relay.settle(abandon=client.gone)
    return relay.sent


def failure_of(flight: Flight) -> UpstreamFailure | None:
    """Why a finished flight's answer cannot be passed on as it is; None when it can.

    An upstream refusing the gateway's own credentials (401/403) is the operator's to fix, not
    the client's: it becomes a 502 that says so, never a 401 the client would take as its own.
    """
    if not flight.head_ready or (flight.error and not flight.streaming):
        return flight.failure or UpstreamFailure(flight.error or "no response")
    if flight.status in (401, 403):
        where = flight.upstream.url if flight.upstream is not None else "the upstream"
        return UpstreamFailure(
            f"{where} refused the gateway's credentials (HTTP {flight.status}): give its API "
            "key with --upstream-key-file", code="upstream_auth_failed",
        )  # fmt: skip
    return None


def response_head(req: GenerationRequest, flight: Flight, label: str) -> dict[str, str]:
    """The headers of a response passed on from ``flight``."""
    head = {"content-type": flight.content_type, **req.extra, CACHE_HEADER: label}
    if flight.upstream is not None:
        head["x-latlab-upstream"] = flight.upstream.url
    return head


def broken_stream_event(flight: Flight) -> bytes:
    """What ends a stream the upstream broke off: an error event, then ``[DONE]``; else b""."""
    if flight.error is None or not flight.content_type.startswith("text/event-stream"):
        return b""
    err = error_body(flight.error, "upstream_error", code="upstream_disconnected")
    return b"data: " + json.dumps(err).encode() + b"\n\ndata: [DONE]\n\n"


class Gateway:
    """The gateway: an ASGI app (``await gateway(scope, receive, send)``) with its state."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.upstreams = UpstreamSet(
            config.upstreams,
            health_interval_s=config.health_interval_s,
            eject_after=config.eject_after,
            access=config.upstream_access(),
        )
        self.metrics = GatewayMetrics(lambda: self.upstreams.all)
        self.router = make_router(config.route, self.upstreams.all, load_factor=config.load_factor)
        store = make_store(config.cache, max_bytes=config.cache_max_bytes)
        self.cache = (
            ResponseCache(store, ttl_s=config.cache_ttl_s, metrics=self.metrics) if store else None
        )
        self.keys: KeyRing | None = load_keys(config.api_keys) if config.api_keys else None
        limits = config.limits_store
        self.limiter = RedisLimiter(limits, self.metrics) if limits else MemoryLimiter()
        self.flights = Flights()
        self.trimmer = Trimmer(
            config.tokenizer, default_budget=config.trim_to, metrics=self.metrics
        )
        self._background: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once started
        self.loop_lag = LoopLagMonitor(self.metrics.loop_lag)

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.loop_lag.start()
        await self.upstreams.start()
        self.metrics.start()
        if self.cache is not None:
            await self.cache.open()
        for up in self.upstreams.all:
            if not up.healthy:
                log.warning("upstream %s is not answering yet: %s", up.url, up.last_error)

    async def close(self) -> None:
        self.loop_lag.stop()
        self.metrics.stop()
        for flight_task in list(self._background):
            flight_task.cancel()
        await self.upstreams.close()
        if self.cache is not None:
            await self.cache.close()
        await self.limiter.close()

    # ---- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: asgi.Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path in ENDPOINTS:
                if method != "POST":
                    raise RequestError(
                        f"use POST for {path}", status=405, code="method_not_allowed"
                    )
                await self._generate(scope, receive, send, *ENDPOINTS[path])
            elif method == "GET" and path in ("/v1/models", "/health", "/metrics"):
                await self._info(scope, send, path)
            else:
                raise RequestError(f"no route {method} {path}", status=404, code="not_found")
        except RequestError as exc:
            label = ENDPOINTS.get(path, (path,))[0]
            self.metrics.child(self.metrics.requests, label, str(exc.status)).inc()
            await asgi.send_json(send, exc.status, exc.body(), exc.headers)
        except asgi.ClientGone:
            return

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _info(self, scope: asgi.Scope, send: Any, path: str) -> None:
        if path == "/metrics":
            await asgi.send_bytes(send, 200, self.metrics.render(), CONTENT_TYPE)
        elif path == "/health":
            ok, report = self.upstreams.health()
            await asgi.send_json(send, 200 if ok else 503, report)
        else:
            self._tenant(asgi.request_headers(scope))
            await asgi.send_json(send, 200, self.upstreams.models_response())

    # ---- one generation request -------------------------------------------------------------

    async def _generate(
        self, scope: asgi.Scope, receive: Any, send: Any, endpoint: str, model_type: Any
    ) -> None:
        req = await self._accept(scope, receive, endpoint, model_type)
        plan = req.plan
        client = asgi.ClientWatch(receive)
        try:
            recording = await self.cache.get(plan.key, plan.control) if plan.read else None
            if recording is not None:
                self.metrics.child(self.metrics.cache, "hit").inc()
                await self._charge_reused(req, recording)  # its tokens are known now
                await self._replay(req, recording, client, send)
                return
            flight, label = self.flight_for(req)
            await self._follow(req, flight, client, send, label)
            if label == "coalesced" and flight.complete:
                await self._charge_reused(req, flight)
        finally:
            client.close()

    async def _accept(
        self, scope: asgi.Scope, receive: Any, endpoint: str, model_type: Any
    ) -> GenerationRequest:
        """Key, body, limits, model, trimming: everything checked before any answer is sought."""
        arrival = self._arrival(scope)
        headers = asgi.request_headers(scope)
        tenant = self._tenant(headers)
        raw = await asgi.read_body(receive, headers, self.config.max_body_bytes)
        parse_request(model_type, raw)  # malformed: the same 400 as latlab serve, never sent on
        body = scope.get("state", {}).get(PARSED_BODY_KEY)  # parsed once, by the guard
        if not isinstance(body, dict):
            body = json.loads(raw)
        await self._admit(tenant)
        self._check_model(body.get("model"))
        try:
            extra, changed = await self.trimmer.apply(body, headers, self._model_root(body))
        except TrimError as exc:
            raise RequestError(str(exc), code="trim_failed") from None
        if changed:
            raw = json.dumps(body, ensure_ascii=False).encode()
        return GenerationRequest(
            endpoint=endpoint, arrival=arrival, headers=headers, tenant=tenant, body=body,
            raw=raw, extra=extra, prompt=prompt_text(body),
            plan=self._plan(endpoint, body, headers, tenant),
        )  # fmt: skip

    def accept_now(
        self, scope: asgi.Scope, headers: dict[str, str], raw: bytes, body: dict[str, Any]
    ) -> GenerationRequest | None:
        """``_accept`` without awaiting, for the direct lane (latlab.gateway.lane): the request
        when nothing before the upstream call needs to wait (no limit to ask, no trimming, no
        cache to read); None hands it to the ASGI path, which also answers every refusal.
        Nothing is counted or charged before the request is taken."""
        endpoint, model_type = ENDPOINTS[scope["path"]]
        keys = self.keys
        tenant = ANONYMOUS if keys is None else keys.lookup(headers.get("authorization"))
        if tenant is None or tenant.requests_per_minute or tenant.tokens_per_minute:
            return None
        try:
            parse_request(model_type, raw)
            self._check_model(body.get("model"))
            if self.trimmer.budget(headers) is not None:
                return None
        except (RequestError, TrimError):
            return None
        plan = self._plan(endpoint, body, headers, tenant)
        if plan.read:
            return None
        return GenerationRequest(
            endpoint=endpoint, arrival=self._arrival(scope), headers=headers, tenant=tenant,
            body=body, raw=raw, extra={}, prompt=prompt_text(body), plan=plan,
        )  # fmt: skip

    def _arrival(self, scope: asgi.Scope) -> int:
        """When the request's first byte was parsed (the server's stamp), else now; the wait
        until here (the body's upload, then the event loop's queue) is recorded."""
        now = _now()
        head = scope.get("state", {}).get(HEAD_NS_KEY)
        if not head:  # a server without the stamp (latlab.serve.connections)
            return now
        self.metrics.request_wait.observe((now - head) / 1e9)
        return head

    async def _charge_reused(self, req: GenerationRequest, answer: Recording | Flight) -> None:
        """A cached or coalesced answer spends the key's tokens too (latlab.gateway.keys)."""
        if req.tenant.count_cache_hits and req.tenant.tokens_per_minute:
            await self.limiter.charge(req.tenant, answer.tokens(req.prompt_tokens))

    def _tenant(self, headers: dict[str, str]) -> Tenant:
        if self.keys is None:
            return ANONYMOUS
        tenant = self.keys.lookup(headers.get("authorization"))
        if tenant is None:
            self.metrics.auth_failures.inc()
            raise RequestError(
                "a valid API key is required: send 'Authorization: Bearer KEY'",
                status=401,
                type="authentication_error",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )
        return tenant

    async def _admit(self, tenant: Tenant) -> None:
        refused = await self.limiter.acquire(tenant)
        if refused is None:
            return
        retry_s, which = refused
        self.metrics.child(self.metrics.rate_limited, which).inc()
        per = "requests" if which == "requests" else "tokens"
        raise RequestError(
            f"rate limit reached: {per} per minute for this key; retry after {retry_s:.1f} s",
            status=429,
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"retry-after": str(max(1, math.ceil(retry_s)))},
        )

    def _check_model(self, model: Any) -> None:
        if isinstance(model, str) and not self.upstreams.known_model(model):
            served = ", ".join(self.upstreams.served_models()) or "none"
            raise RequestError(
                f"model '{model}' is not served here; the upstreams serve: {served}",
                param="model",
                code="model_not_found",
            )

    def _model_root(self, body: dict[str, Any]) -> str | None:
        """Where the model's files are, as its upstream reports (``root`` in /v1/models)."""
        model = body.get("model")
        for up in self.upstreams.all:
            for card in up.model_cards:
                if model is None or card.get("id") == model:
                    root = card.get("root")
                    return str(root) if root else str(card.get("id"))
        return model if isinstance(model, str) else None

    def _plan(
        self, endpoint: str, body: dict[str, Any], headers: dict[str, str], tenant: Tenant
    ) -> _Plan:
        control = CacheControl.parse(headers.get("cache-control"))
        if control.no_store or not (is_deterministic(body) or tenant.cache_sampled):
            return _Plan(control=control)
        has_cache = self.cache is not None
        return _Plan(
            key=cache_key(endpoint, body, tenant=tenant.name),
            read=has_cache and control.may_read,
            write=has_cache and control.may_write,
            coalesce=self.config.coalesce and not control.no_cache,
            control=control,
        )

    # ---- upstream call ----------------------------------------------------------------------

    def flight_for(self, req: GenerationRequest) -> tuple[Flight, str]:
        """An identical request's flight to follow (coalescing), else a new upstream call; and
        what the response's cache header says (the cache was read already, when it is on)."""
        plan = req.plan
        flight = self.flights.join(plan.key) if plan.coalesce else None
        label = "coalesced" if flight else ("miss" if plan.read else "bypass")
        self.metrics.child(self.metrics.cache, label).inc()
        if flight is None:
            flight = self._launch(req)
        return flight, label

    def _launch(self, req: GenerationRequest) -> Flight:
        body, headers, plan = req.body, req.headers, req.plan
        call = Call(
            endpoint=req.endpoint,
            body=req.raw,
            headers={
                "Content-Type": "application/json",
                "Accept": headers.get("accept", "*/*"),
                "X-Request-Id": headers.get("x-request-id") or _request_id(),
            },
            tokens=req.prompt_tokens + int(body.get("max_tokens") or _DEFAULT_MAX_TOKENS),
            timeout_s=self.config.upstream_timeout_s,
        )
        prefix = None
        if self.router.name == "prefix":
            prefix = prefix_key(req.prompt, block=self.config.prefix_chars)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        flight = Flight(key=plan.key if plan.coalesce else None, metrics=self.metrics,
                        loop=self._loop)  # fmt: skip

        def pick(tried: Any) -> tuple[Upstream, bool] | None:
            candidates = [u for u in self.upstreams.candidates(model) if u not in tried]
            if not candidates:
                return None
            up, how = self.router.choose(candidates, prefix)
            self.metrics.child(self.metrics.routes, self.router.name, how).inc()
            return up, len(candidates) > 1

        async def after(done: Flight) -> None:
            if req.tenant.tokens_per_minute:
                await self.limiter.charge(req.tenant, done.tokens(req.prompt_tokens))
            if plan.write and self.cache is not None and plan.key and done.complete:
                await self.cache.put(plan.key, done.recording())

        work = flight.run(call, pick, eject_after=self.config.eject_after, after=after)
        self.flights.start(flight, work)
        return flight

    # ---- writing the response ---------------------------------------------------------------

    async def _follow(
        self, req: GenerationRequest, flight: Flight, client: asgi.ClientWatch, send: Any,
        label: str,
    ) -> None:  # fmt: skip
        """Stream ``flight`` to one client from its first byte until it ends or the client goes.

        A response that is not a stream is sent whole once it is complete (its client sees
        nothing earlier anyway), so one cut short becomes a 502, never a truncated 200 body.
        """
        try:
            while not (flight.done or (flight.head_ready and flight.streaming)):
                if client.gone:
                    return
                await client.wait(flight.waiter())
            if client.gone:
                return
            failure = failure_of(flight)
            if failure is not None:
                await self._upstream_failed(send, req.endpoint, failure)
                return
            self.metrics.child(self.metrics.requests, req.endpoint, str(flight.status)).inc()
            head = asgi.encode_headers(response_head(req, flight, label))
            await send({"type": "http.response.start", "status": flight.status, "headers": head})
            await self._pieces(flight, client, send, req.arrival, label)
        finally:
            self.flights.leave(flight)

    async def _pieces(
        self, flight: Flight, client: asgi.ClientWatch, send: Any, arrival: int, label: str
    ) -> None:
        sent = 0
        pieces = flight.pieces
        first = FirstContent(flight, self.metrics.child(self.metrics.ttft, label), arrival)
        while not client.gone:
            n = len(pieces)
            if sent < n:
                data = pieces[sent] if n - sent == 1 else b"".join(pieces[sent:n])
                first.check(n)
                sent = n
                await send({"type": "http.response.body", "body": data, "more_body": True})
            elif flight.done:
                break
            elif flight.streaming:  # caught up: the flight writes the next pieces itself
                sent = await _relayed(flight, client, send, sent, first.check)
            else:
                await client.wait(flight.waiter())
        if client.gone:
            return
        event = broken_stream_event(flight)
        if event:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _upstream_failed(
        self, send: Any, endpoint: str, failure: UpstreamFailure | None
    ) -> None:
        status, body = self.failure_answer(endpoint, failure)
        await asgi.send_json(send, status, body, {CACHE_HEADER: "bypass"})

    def failure_answer(
        self, endpoint: str, failure: UpstreamFailure | None
    ) -> tuple[int, dict[str, Any]]:
        """The status and error body for a request no upstream answered, counted."""
        failure = failure or UpstreamFailure("the upstream call was cancelled")
        self.metrics.child(self.metrics.requests, endpoint, str(failure.status)).inc()
        return failure.status, error_body(failure.message, "upstream_error", code=failure.code)

    async def _replay(
        self, req: GenerationRequest, rec: Recording, client: asgi.ClientWatch, send: Any
    ) -> None:
        """A cached response: the same events, at once or paced as they were recorded."""
        head = {"content-type": rec.content_type, **req.extra, CACHE_HEADER: "hit"}
        self.metrics.child(self.metrics.requests, req.endpoint, str(rec.status)).inc()
        await send({"type": "http.response.start", "status": rec.status,
                    "headers": asgi.encode_headers(head)})  # fmt: skip
        if not rec.stream:
            await send({"type": "http.response.body", "body": rec.body, "more_body": False})
            return
        paced = req.headers.get(REPLAY_HEADER, self.config.replay) == "paced"
        start, ttft_seen = _now(), False
        for event, offset_ms in zip(rec.events, rec.offsets_ms, strict=True):
            if client.gone:
                return
            if paced:
                delay_s = (start + offset_ms * 1e6 - _now()) / 1e9
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
            if not ttft_seen and has_content(event):
                ttft_seen = True
                self.metrics.child(self.metrics.ttft, "hit").observe((_now() - req.arrival) / 1e9)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
