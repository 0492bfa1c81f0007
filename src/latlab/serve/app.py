"""The OpenAI-compatible FastAPI app in front of a latlab ``AsyncLLM``.

Every request goes the same way: the guard (latlab.serve.guard) checks who is calling and
the request's size and shape, then the app validates the JSON strictly, tokenizes (through the chat
template for chat), check the context length, build SamplingParams, then wait for the
engine's first output *before* sending headers. Waiting for the first output costs the client
nothing (its TTFT is the first content chunk either way) and lets every engine refusal
(queue full, cannot fit, bad parameter) become a proper status code instead of an error event
inside a 200 stream.

A client that goes away is noticed at once, while waiting for the first token as well as
mid-stream, and the engine's iterator is closed so the sequence and its KV blocks are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from latlab.engine.outputs import RequestOutput
from latlab.engine.protocol import Engine
from latlab.errors import CapacityError, ConfigError, LatlabError, OverloadedError
from latlab.serve import logprobs as lp
from latlab.serve import sse
from latlab.serve.guard import HEAD_NS_KEY, Drain, Guard, GuardConfig, RequestLimits, parsed_body
from latlab.serve.prep import PrepProcess, Refusal, Tokens, WorkerDied
from latlab.serve.prometheus import (
    CONTENT_TYPE,
    HistogramBuckets,
    RequestTracker,
    ServeMetrics,
    count_http_status,
)
from latlab.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    RequestError,
    TokenizeRequest,
    chat_response,
    completion_response,
    config_error,
    error_body,
    new_id,
    now_s,
    parse_request,
    usage_dict,
)

Outputs = AsyncGenerator[RequestOutput, None]  # one request's stream from the engine

# Seconds a client is told to wait after a 503 (the queue drains in about that long at
# typical CPU decode rates; clients with backoff retry sooner or later anyway).
RETRY_AFTER_S = 1
# Requests whose preparation handles more than this many characters (or token ids) are
# tokenized, rendered and checked on a worker thread, so the event loop keeps every stream
# flowing meanwhile; smaller ones (under about a millisecond) are cheaper inline than a
# thread hop. A chat message counts as this many characters of template work besides its text.
OFFLOAD_ABOVE = 4096
MESSAGE_COST = 64
# Set on the preparation thread: what runs there is large, and goes to the preparation process
# when one is up (latlab.serve.prep); small requests are prepared inline, as before.
_PREP_THREAD = threading.local()


def _mark_large() -> None:
    _PREP_THREAD.large = True


@dataclass(slots=True)
class _Job:
    """One validated request, ready for the engine."""

    rid: str
    prompt_ids: list[int]
    params: Any
    stream: bool
    include_usage: bool
    chat: bool
    echo_text: str | None = None  # completions with echo: the prompt, returned first


def create_app(
    engine: Engine,
    served_model_name: str,
    *,
    make_params: Callable[..., Any] | None = None,
    guard: GuardConfig | None = None,
    drain: Drain | None = None,
    buckets: HistogramBuckets | None = None,
    prep_process: PrepProcess | None = None,
) -> FastAPI:
    """Build the app serving ``engine`` (``latlab.engine.AsyncLLM``, or anything keeping the
    ``latlab.engine.protocol.Engine`` contract) as ``served_model_name``.

    ``make_params`` builds sampling parameters from keyword arguments; it defaults to
    ``latlab.SamplingParams`` and exists so the app can be tested against a fake engine.
    ``guard`` defaults to no key, any Host, and request limits derived from the model's
    context; ``drain`` is shared with the server so shutdown can refuse new requests.
    ``buckets`` sets the latency histograms' edges (``latlab serve --ttft-buckets``).
    ``prep_process`` (started, owned and closed by the caller) prepares large requests in
    another process once it is up (latlab.serve.prep); without it they go to a thread.
    """
    app = FastAPI(title="latlab serve", docs_url=None, redoc_url=None, openapi_url=None)
    drain = drain or Drain()
    server = _Server(
        engine, served_model_name, make_params or _default_make_params(), drain, buckets,
        prep_process,
    )  # fmt: skip
    app.state.latlab = server
    _add_error_handlers(app)
    guard = guard or GuardConfig(limits=RequestLimits.for_context(int(engine.max_model_len)))
    app.add_middleware(Guard, config=guard, drain=drain)
    # Outermost, so the guard's refusals (401, 413, 503 while draining) are counted too.
    app.add_middleware(count_http_status, counter=server.metrics.http)  # type: ignore[arg-type]
    app.add_middleware(_StampArrival)  # added last: runs first, before the body is read
    _add_routes(app, server)
    return app


def _add_routes(app: FastAPI, server: _Server) -> None:
    """The OpenAI-compatible endpoints, vLLM's /tokenize and /detokenize, health, metrics."""

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse_request(CompletionRequest, await _body(request))
        return await server.run(await server.prepare(req), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_request(ChatCompletionRequest, await _body(request))
        return await server.run(await server.prepare(req), request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        req = parse_request(TokenizeRequest, await _body(request))
        return await server.off_loop(_work_size(req), server.tokenize, req)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        req = parse_request(DetokenizeRequest, await _body(request))
        return await server.off_loop(_work_size(req), server.detokenize, req)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(content=server.metrics.render(), media_type=CONTENT_TYPE)


async def _body(request: Request) -> Any:
    """The body the guard already parsed (its size, depth and shape checked)."""
    body = parsed_body(request.scope)
    return body if body is not None else await request.body()


def _default_make_params() -> Callable[..., Any]:
    from latlab.engine.sampling_params import SamplingParams

    return SamplingParams


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = error_body(str(exc.detail), "invalid_request_error", code=exc.status_code)
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        body = error_body(f"internal error: {type(exc).__name__}: {exc}", "internal_error")
        return JSONResponse(body, status_code=500)


def _shutting_down() -> RequestError:
    return RequestError(
        "the server is shutting down and ended this request; retry on another instance or later",
        status=503,
        type="service_unavailable",
        code="shutting_down",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


@contextlib.contextmanager
def _engine_errors(drain: Drain) -> Iterator[None]:
    """Engine refusals -> HTTP: full queue 503 + Retry-After, the rest 400; a request the
    engine dropped because the server is shutting down, 503."""
    try:
        yield
    except OverloadedError as exc:
        raise RequestError(
            str(exc) or "the server's waiting queue is full; retry later",
            status=503,
            type="overloaded_error",
            code="overloaded",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    except CapacityError as exc:
        raise RequestError(str(exc), code="capacity_exceeded") from None
    except ConfigError as exc:
        raise config_error(exc) from None
    except LatlabError:
        if drain.draining:
            raise _shutting_down() from None
        raise


class _Server:
    """Request handling shared by both endpoints."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        make_params: Callable[..., Any],
        drain: Drain,
        buckets: HistogramBuckets | None = None,
        prep_process: PrepProcess | None = None,
    ) -> None:
        self.engine = engine
        self.drain = drain
        self.model_name = model_name
        self.make_params = make_params
        self.metrics = ServeMetrics(engine.stats, model_name, buckets=buckets)
        # One worker: large requests are prepared in turn, never several at once.
        self._prep = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="latlab-prep", initializer=_mark_large
        )
        self._token_text: lp.Decode | None = None
        self.tokens = Tokens(engine.tokenizer, int(engine.max_model_len))
        self.prep_process = prep_process

    # ---- validation and tokenization ------------------------------------------------------

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise RequestError(
                f"model '{model}' is not served here; this server serves '{self.model_name}'",
                param="model",
                code="model_not_found",
            )

    async def prepare(self, req: CompletionRequest | ChatCompletionRequest) -> _Job:
        """Validate, tokenize and build the sampling parameters; large inputs off the loop."""
        if isinstance(req, ChatCompletionRequest):
            return await self.off_loop(_work_size(req), self.prepare_chat, req)
        return await self.off_loop(_work_size(req), self.prepare_completion, req)

    async def off_loop(self, size: int, work: Callable[[Any], Any], req: Any) -> Any:
        """``work(req)`` inline when ``size`` is small, else on the preparation thread."""
        if size <= OFFLOAD_ABOVE:
            return work(req)
        return await asyncio.get_running_loop().run_in_executor(self._prep, work, req)

    def prepare_completion(self, req: CompletionRequest) -> _Job:
        self._check_model(req.model)
        req.check_supported()
        prompt = req.single_prompt()
        text = isinstance(prompt, str)
        ids = self._prompt_ids(prompt) if text else self._check_token_ids(prompt)
        job = self._job(req, ids, req.max_tokens, chat=False, prefix="cmpl")
        if req.echo:
            job.echo_text = prompt if text else self.engine.tokenizer.decode(ids)
        return job

    def prepare_chat(self, req: ChatCompletionRequest) -> _Job:
        self._check_model(req.model)
        req.check_supported()
        ids = self._chat_ids(req.messages, req.add_generation_prompt)
        return self._job(req, ids, req.requested_max_tokens, chat=True, prefix="chatcmpl")

    def _prompt_ids(
        self, prompt: str, add_special_tokens: bool = True, *, bounded: bool = True
    ) -> list[int]:
        return self._ids("prompt_ids", prompt, add_special_tokens, bounded=bounded)

    def _chat_ids(
        self,
        chat: list[Any],
        add_generation_prompt: bool,
        add_special_tokens: bool = False,
        *,
        bounded: bool = True,
    ) -> list[int]:
        messages = [m.as_template_dict() for m in chat]
        return self._ids(
            "chat_ids", messages, add_generation_prompt, add_special_tokens, bounded=bounded
        )

    def _ids(self, method: str, *args: Any, **kwargs: Any) -> list[int]:
        """``Tokens.<method>``: in the preparation process for a large request once it is up
        (its GIL is not the engine's), else here; refusals become the same 400s either way."""
        process = self.prep_process
        try:
            if process is not None and process.ready and getattr(_PREP_THREAD, "large", False):
                return process.call(method, *args, **kwargs)
            return getattr(self.tokens, method)(*args, **kwargs)
        except Refusal as exc:
            raise RequestError(exc.message, param=exc.param, code=exc.code) from None
        except WorkerDied as exc:
            raise RequestError(
                f"{exc}; retry the request",
                status=503,
                type="service_unavailable",
                code="preparation_failed",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None

    def tokenize(self, req: TokenizeRequest) -> dict[str, Any]:
        """The token ids this server would run for a prompt or chat, as vLLM's /tokenize."""
        self._check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise RequestError("give exactly one of 'prompt' or 'messages'", param="prompt")
        if req.prompt is not None:
            special = True if req.add_special_tokens is None else req.add_special_tokens
            ids = self._prompt_ids(req.prompt, special, bounded=False)
        else:
            ids = self._chat_ids(req.messages or [], req.add_generation_prompt,
                                 bool(req.add_special_tokens), bounded=False)  # fmt: skip
        out: dict[str, Any] = {"count": len(ids), "max_model_len": int(self.engine.max_model_len),
                               "tokens": ids}  # fmt: skip
        if req.return_token_strs:
            out["token_strs"] = self.engine.tokenizer.convert_ids_to_tokens(ids)
        return out

    def detokenize(self, req: DetokenizeRequest) -> dict[str, Any]:
        self._check_model(req.model)
        ids = self._check_token_ids(req.tokens)
        return {"prompt": self.engine.tokenizer.decode(ids)}

    def _check_token_ids(self, ids: list[int]) -> list[int]:
        try:
            vocab = len(self.engine.tokenizer)
        except TypeError:
            return list(ids)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(
                f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt"
            )
        return list(ids)

    def _job(self, req: Any, ids: list[int], max_tokens: int | None, *, chat: bool, prefix: str):
        if not ids:
            raise RequestError("the prompt is empty", param="prompt")
        max_tokens = self._resolve_max_tokens(len(ids), max_tokens)
        with _engine_errors(self.drain):
            params = self.make_params(**req.sampling_kwargs(max_tokens))
        return _Job(new_id(prefix), ids, params, req.stream, req.include_usage, chat)

    def _resolve_max_tokens(self, prompt_len: int, requested: int | None) -> int:
        limit = int(self.engine.max_model_len)
        if prompt_len >= limit:
            raise RequestError(
                f"this model's maximum context length is {limit} tokens; the prompt has "
                f"{prompt_len} tokens, which leaves no room for output; shorten it",
                param="prompt",
                code="context_length_exceeded",
            )
        if requested is None:
            # "As much as fits": the context, and the KV cache when that is smaller, so an
            # unset max_tokens never turns into a capacity error the client did not ask for.
            return max(1, min(limit, self._kv_capacity_tokens() or limit) - prompt_len)
        if prompt_len + requested > limit:
            raise RequestError(
                f"this model's maximum context length is {limit} tokens; you requested "
                f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} "
                f"for the output); lower max_tokens or shorten the prompt",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested

    def _kv_capacity_tokens(self) -> int | None:
        """Tokens the whole KV cache holds (None when the engine does not say)."""
        return self.engine.stats().kv_cache_tokens or None

    # ---- running ----------------------------------------------------------------------------

    async def run(self, job: _Job, request: Request) -> Response:
        tracker = self.metrics.tracker(request.scope.get("state", {}).get(ARRIVAL_KEY))
        with _engine_errors(self.drain):
            outputs = self.engine.generate(job.prompt_ids, job.params, request_id=job.rid)
        try:
            with _engine_errors(self.drain):
                first = await _unless_disconnected(outputs.__anext__(), request)
        except BaseException:
            await _close(outputs)
            raise
        if first is _GONE:
            await _close(outputs)
            return Response(status_code=499)
        if job.stream:
            body = self._stream(job, outputs, first, tracker)
            return _ClosingStreamingResponse(
                body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        try:
            with _engine_errors(self.drain):
                final = await _unless_disconnected(_drain(outputs, first, tracker), request)
        finally:
            await _close(outputs)
        if final is _GONE:
            return Response(status_code=499)
        tracker.on_finished(final)
        build = chat_response if job.chat else completion_response
        text = (job.echo_text or "") + final.text
        body = build(job.rid, self.model_name, text, final.finish_reason, _usage(job, final))
        self._add_logprobs(body, job, final)
        return JSONResponse(body)

    def _add_logprobs(self, body: dict[str, Any], job: _Job, final: Any) -> None:
        """Logprob fields of a non-streamed response, when the request asked for them."""
        params, decode = job.params, self._decode()
        choice = body["choices"][0]
        if params.logprobs is not None and final.logprobs is not None:
            if job.chat:
                choice["logprobs"] = lp.chat_logprobs(
                    final.token_ids, final.logprobs, params.logprobs, decode
                )
            else:
                tokens, entries = list(final.token_ids), list(final.logprobs)
                if job.echo_text is not None and final.prompt_logprobs is not None:
                    tokens, entries = job.prompt_ids + tokens, final.prompt_logprobs + entries
                choice["logprobs"] = lp.completion_logprobs(
                    tokens, entries, params.logprobs, decode
                )
        if params.prompt_logprobs is not None and final.prompt_logprobs is not None:
            where = body if job.chat else choice  # vLLM: top level for chat, per choice else
            where["prompt_logprobs"] = lp.prompt_logprobs(final.prompt_logprobs, decode)

    def _decode(self) -> lp.Decode:
        if self._token_text is None:
            self._token_text = lp.token_text(self.engine.tokenizer)
        return self._token_text

    def _stream_logprobs(self, job: _Job, output: Any, sent: int) -> tuple[Any, int]:
        """Logprobs of the tokens generated since ``sent`` (in the endpoint's shape)."""
        count = job.params.logprobs
        if count is None or output.logprobs is None or len(output.logprobs) <= sent:
            return None, sent
        tokens, entries = output.token_ids[sent:], output.logprobs[sent:]
        decode = self._decode()
        if job.chat:
            return lp.chat_logprobs(tokens, entries, count, decode), len(output.logprobs)
        return lp.completion_logprobs(tokens, entries, count, decode), len(output.logprobs)

    async def _stream(
        self, job: _Job, outputs: Outputs, first: RequestOutput, tracker: RequestTracker
    ) -> AsyncIterator[bytes]:
        writer = sse.ChunkWriter(
            job.rid, self.model_name, chat=job.chat, include_usage=job.include_usage
        )
        try:
            if job.chat:
                yield writer.start()
            output = first
            sent = 0  # tokens whose logprobs went out (text held back for UTF-8 waits too)
            while True:
                tracker.on_output(output)
                # One chunk per step that produced tokens, even when their text is empty (a
                # token that decodes to nothing yet): clients count it as a token arrival.
                if output.new_token_ids or output.new_text or output.finished:
                    finish = output.finish_reason if output.finished else None
                    logprobs, sent = self._stream_logprobs(job, output, sent)
                    yield writer.content(output.new_text or "", finish, logprobs)
                if output.finished:
                    break
                try:
                    output = await outputs.__anext__()
                except StopAsyncIteration:
                    break
            tracker.on_finished(output)
            if job.include_usage:
                yield writer.usage(_usage(job, output))
        except LatlabError as exc:  # headers are out: report the failure as an event
            error = _shutting_down().body() if self.drain.draining else None
            yield writer.error(error or error_body(str(exc), "internal_error"))
        finally:
            await _close(outputs)
        yield sse.DONE

    def models(self) -> dict[str, Any]:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": now_s(),
            "owned_by": "latlab",
            # The served name, never the engine's path: --served-model-name exists to hide it.
            "root": self.model_name,
            "max_model_len": int(self.engine.max_model_len),
        }
        return {"object": "list", "data": [card]}


def _size(value: Any) -> int:
    """Characters of a string, ids of a token list, either summed over a batch."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return (
            sum(_size(v) for v in value)
            if value and isinstance(value[0], str | list)
            else len(value)
        )
    return 0


def _message_chars(content: Any) -> int:
    if isinstance(content, list):  # text parts
        return sum(len(part.text) for part in content)
    return len(content or "")


def _work_size(req: Any) -> int:
    """About how many characters (or token ids) handling ``req`` goes through."""
    size = sum(_size(getattr(req, name, None)) for name in ("stop", "prompt", "tokens"))
    messages = getattr(req, "messages", None) or []
    return size + sum(_message_chars(m.content) + MESSAGE_COST for m in messages)


def _usage(job: _Job, output: RequestOutput) -> dict[str, Any]:
    return usage_dict(len(job.prompt_ids), len(output.token_ids), output.num_cached_tokens)


async def _drain(outputs: Outputs, first: RequestOutput, tracker: RequestTracker) -> RequestOutput:
    """The last output of a non-streamed request."""
    output = first
    tracker.on_output(output)
    while not output.finished:
        try:
            output = await outputs.__anext__()
        except StopAsyncIteration:
            break
        tracker.on_output(output)
    return output


_GONE = object()


async def _unless_disconnected(work: Any, request: Request) -> Any:
    """Await ``work`` unless the client disconnects first (then cancel it, return _GONE)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        return _GONE
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _close(outputs: Outputs) -> None:
    """Close the engine iterator, which aborts the request and frees its KV blocks.

    Shielded: this runs while a disconnect is cancelling the response, and an unshielded
    await here would be cancelled before the engine heard of the abort.
    """
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await outputs.aclose()


ARRIVAL_KEY = "latlab.arrival_ns"


class _StampArrival:
    """Stamps each HTTP request's arrival (``perf_counter_ns``): when its first byte was parsed,
    where latlab's HTTP protocols say so (``HEAD_NS_KEY``), else the moment the app receives it.

    The server's TTFT and E2E start here, as a client's do when it sends: reading the body,
    waiting for the event loop, validation, tokenization and waiting for the engine's next step
    are all the server's time.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            state = scope.setdefault("state", {})
            state[ARRIVAL_KEY] = state.get(HEAD_NS_KEY) or time.perf_counter_ns()
        await self.app(scope, receive, send)


class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator.

    Starlette leaves the iterator suspended when the client disconnects between chunks; it
    would then hold its sequence until garbage collection. Closing it runs our ``finally``.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[union-attr]
