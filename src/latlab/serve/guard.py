"""HTTP protection in front of an OpenAI-compatible app: who may call, and what a request may be.

``Guard`` is a plain ASGI middleware (stdlib + starlette only, no torch, no FastAPI), shared by
``latlab serve`` and ``latlab gateway``. Every check runs before the app sees the request and
costs at most one bounded read and one bounded JSON parse of the body:

1. while the server drains for shutdown, new requests get 503;
2. the ``Host`` header must be allowed (a loopback server answers only loopback names, which
   defeats DNS rebinding);
3. a browser's ``Origin`` must be the server itself or allowed (a web page cannot drive a
   local server: a ``text/plain`` POST needs no CORS preflight, so CORS alone does not stop it);
4. ``Authorization: Bearer KEY`` must match a configured key (constant-time compare);
5. request bodies must be ``application/json``, at most ``max_body_bytes``, read within
   ``body_timeout_s``, nested at most ``max_json_depth`` deep (checked on the raw bytes), and
   within the shape limits (message count, stop list, token-id prompt...) of ``RequestLimits``.

Refusals are OpenAI-style JSON error bodies and close the connection (an unread body must not
be parsed as the next request). The parsed body is handed to the app (``parsed_body``) so it
is parsed once.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from latlab.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Paths answered without an API key: liveness probes and Prometheus scrapes (as vLLM does).
PUBLIC_PATHS = ("/health", "/metrics")
# Key of the parsed JSON body in the ASGI scope's state.
PARSED_BODY_KEY = "latlab.parsed_body"
HEADERS_KEY = "latlab.headers"  # the lower-cased header dict the guard decoded, for the app
# perf_counter_ns when the request's first byte was parsed (latlab.serve.connections): what
# a request waited before its handler ran counts from here.
HEAD_NS_KEY = "latlab.request_head_ns"
# A refused client may retry after this many seconds (drain, connection cap).
RETRY_AFTER_S = 1
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Depth is measured on brackets alone, both kinds folded into one (type mismatches are the
# parser's to report): "{" -> "[", "}" -> "]", every other byte dropped.
_FOLD_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Bodies larger than this give the event loop a turn between depth passes.
SMALL_BODY_BYTES = 64 << 10


def error_body(
    message: str, type: str, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    """The OpenAI error shape every client library knows how to read."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(kw_only=True, slots=True, frozen=True)
class RequestLimits:
    """The largest request accepted, in shape as well as bytes; all checked before any work.

    Each limit bounds the work one request can force on the server before it is refused:
    parsing is bounded by ``max_body_bytes`` and ``max_json_depth``; template rendering by
    ``max_messages``; stop matching by ``max_stop`` and ``max_stop_token_ids``; a token-id
    prompt by ``max_prompt_tokens``. ``for_context`` derives them from the model's context.
    """

    max_body_bytes: int = 1 << 20
    max_json_depth: int = 32  # OpenAI bodies nest about 5 deep; tool schemas a few more
    max_messages: int = 1024
    max_stop: int = 64  # stop strings (OpenAI allows 4)
    max_stop_token_ids: int = 1024
    max_prompt_tokens: int = 1 << 17  # token ids in one prompt
    max_logit_bias: int = 1024  # entries in logit_bias

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"request limit {name} must be a positive integer, got {value!r}")

    @classmethod
    def for_context(cls, max_model_len: int, **overrides: int) -> RequestLimits:
        """Defaults for a model whose context is ``max_model_len`` tokens.

        A body gets 64 bytes per context token (JSON-escaped text averages under 30), at
        least 256 KiB; a token-id prompt at most the context itself.
        """
        derived = {
            "max_body_bytes": max(256 << 10, 64 * max_model_len),
            "max_prompt_tokens": max_model_len,
        }
        return cls(**{**derived, **overrides})


@dataclass(kw_only=True, slots=True)
class GuardConfig:
    """Who may call the server and what a request may be (see the module docstring)."""

    api_keys: tuple[str, ...] = ()
    # None: any Host. ``for_bind`` picks the loopback names for a loopback address.
    allowed_hosts: tuple[str, ...] | None = None
    # Browser origins allowed besides the server itself; "*" allows any.
    allowed_origins: tuple[str, ...] = ()
    public_paths: tuple[str, ...] = PUBLIC_PATHS
    limits: RequestLimits = field(default_factory=RequestLimits)
    body_timeout_s: float = 30.0
    # Enforced by the HTTP server (latlab.serve.connections), not by the ASGI middleware.
    header_timeout_s: float = 10.0
    max_connections: int = 1024

    def __post_init__(self) -> None:
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ConfigError("API keys must be non-empty and have no surrounding whitespace")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {self.max_connections}")
        self.allowed_origins = tuple(o.rstrip("/") for o in self.allowed_origins)

    @staticmethod
    def hosts_for_bind(host: str) -> tuple[str, ...] | None:
        """The default Host allow-list: loopback names for a loopback bind, else any."""
        return LOOPBACK_HOSTS if is_loopback(host) else None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_api_keys(path: str | Path) -> tuple[str, ...]:
    """Keys from a file, one a line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API key file {path}: {exc}") from None
    keys = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not keys:
        raise ConfigError(f"the API key file {path} holds no key (one key a line)")
    return keys


class Drain:
    """Shutdown state shared by the server loop and the app: once started, refuse new work."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False

    def start(self) -> None:
        self.draining = True


class Refusal(Exception):
    """A request the guard answers itself, with an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type, param, code)
        self.headers = headers or {}

    async def send(self, send: Send) -> None:
        await send_json(send, self.status, self.body, self.headers)


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """A complete JSON response that also closes the connection."""
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def parsed_body(scope: Scope) -> Any:
    """The JSON body the guard parsed, or None when the request had none."""
    return scope.get("state", {}).get(PARSED_BODY_KEY)


class Guard:
    """ASGI middleware applying a GuardConfig (see the module docstring for the order)."""

    def __init__(self, app: ASGIApp, config: GuardConfig, drain: Drain | None = None) -> None:
        self.config = config
        self.drain = drain or Drain()
        self._keys = tuple(k.encode() for k in config.api_keys)
        self._hosts = _HostMatcher(config.allowed_hosts)
        self.app = _with_cors(app, config.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            headers = decoded_headers(scope)
            scope.setdefault("state", {})[HEADERS_KEY] = headers
            self.check_head(scope, headers)
            if scope["method"] in _BODY_METHODS:
                body = await read_body(receive, headers, self.config)
                scope.setdefault("state", {})[PARSED_BODY_KEY] = await check_json(
                    body, self.config.limits
                )
                receive = _replay(body, receive)
        except Refusal as refusal:
            await refusal.send(send)
            return
        await self.app(scope, receive, send)

    def check_complete(self, scope: Scope, headers: dict[str, str], body: bytes) -> Any:
        """Every check ``__call__`` makes, for a request whose (small) body is all here, without
        awaiting: the parsed body, or the Refusal ``__call__`` would send. CORS is not applied:
        a caller serving a request with an Origin header must go through ``__call__``."""
        self.check_head(scope, headers)
        limit = self.config.limits.max_body_bytes
        if len(body) > limit:
            raise _too_large(limit)
        return check_small_json(body, self.config.limits)

    def check_head(self, scope: Scope, headers: dict[str, str]) -> None:
        """Everything decided by the request line and headers, cheapest first."""
        if self.drain.draining:
            raise Refusal(
                503,
                "the server is shutting down; retry on another instance or later",
                type="service_unavailable",
                code="shutting_down",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        host = headers.get("host", "")
        if host and not self._hosts.allows(host):
            raise Refusal(
                403,
                f"Host '{host}' is not allowed on this server; if you meant to reach it by that "
                "name, start it with --allowed-hosts naming it",
                code="host_not_allowed",
            )
        self._check_origin(headers.get("origin"), host)
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if self._keys and not preflight and scope["path"] not in self.config.public_paths:
            self._check_key(headers.get("authorization"))
        if scope["method"] in _BODY_METHODS:
            _check_json_content_type(headers.get("content-type", ""))

    def _check_origin(self, origin: str | None, host: str) -> None:
        if origin is None:
            return
        allowed = self.config.allowed_origins
        origin = origin.rstrip("/")
        if "*" in allowed or origin in allowed or _same_origin(origin, host):
            return
        raise Refusal(
            403,
            f"requests from the web origin '{origin}' are not allowed (a web page cannot drive "
            "this server); to allow it, start the server with --allowed-origins naming it",
            code="origin_not_allowed",
        )

    def _check_key(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(
                401,
                "this server needs an API key: send it as 'Authorization: Bearer KEY'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        given = token.strip().encode()
        # Compare with every key, without stopping at a match: the time taken says nothing.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise Refusal(
                401,
                "incorrect API key; check the key the server was started with",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )


def decoded_headers(scope: Scope) -> dict[str, str]:
    # latin-1 maps every byte, so a hostile header cannot make decoding fail.
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class _HostMatcher:
    """Host header names: exact, ``*`` (any), or ``*.example.com`` (any subdomain)."""

    def __init__(self, patterns: Iterable[str] | None) -> None:
        self.any = patterns is None or "*" in patterns
        names = [p.lower().strip("[]") for p in patterns or ()]
        self.exact = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))

    def allows(self, host_header: str) -> bool:
        if self.any:
            return True
        name = host_name(host_header)
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


def host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-cased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _same_origin(origin: str, host: str) -> bool:
    """A page served by this very server (same host and port); Host was already checked."""
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(host) and netloc.lower() == host.strip().lower()


def _with_cors(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    """Let allowed browser origins read responses (and pass CORS preflights)."""
    if not origins:
        return app
    from starlette.middleware.cors import CORSMiddleware

    return CORSMiddleware(
        app,  # type: ignore[arg-type]
        allow_origins=origins,
        allow_methods=("GET", "POST", "OPTIONS"),
        allow_headers=("authorization", "content-type"),
    )


def _check_json_content_type(content_type: str) -> None:
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type != "application/json":
        shown = media_type or "none"
        raise Refusal(
            415,
            f"request bodies must be JSON sent with 'Content-Type: application/json' (got {shown})",
            code="unsupported_media_type",
        )


def _too_large(limit: int) -> Refusal:
    return Refusal(
        413,
        f"the request body is larger than {limit} bytes, the most this server accepts "
        "(--max-body-bytes)",
        code="body_too_large",
    )


async def read_body(receive: Receive, headers: dict[str, str], config: GuardConfig) -> bytes:
    """The whole body, refused as soon as it is too large or too slow to arrive."""
    limit = config.limits.max_body_bytes
    declared = headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    deadline = time.monotonic() + config.body_timeout_s
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        try:
            message = await _within(receive(), max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise Refusal(
                408,
                f"the request body did not arrive within {config.body_timeout_s:g} s "
                "(--body-timeout)",
                code="request_timeout",
            ) from None
        if message["type"] == "http.disconnect":
            raise Refusal(499, "the client went away while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _within(message: Awaitable[Message], seconds: float) -> Message:
    """``await message`` with a deadline. On Python 3.11+ in the caller's own task: a body
    already received costs no task and no loop turn (``asyncio.wait_for`` wraps the
    coroutine in a new task on every call: measurable per request in the gateway)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await message
    return await asyncio.wait_for(message, timeout=seconds)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real channel."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def _brackets(raw: bytes) -> bytes:
    """The JSON's brackets outside strings, folded to one kind: C-speed bytes operations."""
    # Escaped backslashes first, then escaped quotes: what is left of '"' delimits strings.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    return outside.translate(_FOLD_BRACKETS, _NOT_BRACKETS)


def _depth_passes(raw: bytes, limit: int) -> Iterator[bool | None]:
    """Peel innermost ``[]`` pairs one level a pass: None after each pass, then the verdict
    (whether the nesting is deeper than ``limit``)."""
    brackets = _brackets(raw)
    too_deep = b"[" * (limit + 1)  # that many opened in a row nest deeper than the limit
    for _ in range(limit):
        if too_deep in brackets:  # a nesting bomb ends here, in one C-speed search
            break
        peeled = brackets.replace(b"[]", b"")
        if not peeled or len(peeled) == len(brackets):
            yield False  # empty: shallow enough; no progress: unbalanced, the parser will say
            return
        brackets = peeled
        yield None
    yield True


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether JSON nests deeper than ``limit``, decided on the bytes before any parsing:
    at most ``limit`` passes of ``bytes.replace`` over its brackets (one search, for a run
    of more than ``limit`` opening brackets)."""
    return next(v for v in _depth_passes(raw, limit) if v is not None)


async def _depth_exceeds_yielding(raw: bytes, limit: int) -> bool:
    """json_depth_exceeds, letting other requests run between passes over a large body."""
    for verdict in _depth_passes(raw, limit):
        if verdict is not None:
            return verdict
        if len(raw) > SMALL_BODY_BYTES:
            await asyncio.sleep(0)
    return False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def check_json(raw: bytes, limits: RequestLimits) -> Any:
    """Parse a request body after checking its depth; then check its shape."""
    _check_not_empty(raw)
    if await _depth_exceeds_yielding(raw, limits.max_json_depth):
        raise _too_deep(limits)
    return _parse_checked(raw, limits)


def check_small_json(raw: bytes, limits: RequestLimits) -> Any:
    """check_json without awaiting, for a body of at most ``SMALL_BODY_BYTES`` (no pass over
    it is long enough to need a turn of the event loop in between)."""
    if len(raw) > SMALL_BODY_BYTES:
        raise ValueError(f"check_small_json takes at most {SMALL_BODY_BYTES} bytes")
    _check_not_empty(raw)
    if json_depth_exceeds(raw, limits.max_json_depth):
        raise _too_deep(limits)
    return _parse_checked(raw, limits)


def _check_not_empty(raw: bytes) -> None:
    if not raw.strip():
        raise Refusal(400, "the request body is empty; send a JSON object", code="invalid_json")


def _too_deep(limits: RequestLimits) -> Refusal:
    return Refusal(
        400,
        f"the request body nests deeper than {limits.max_json_depth} levels (--max-json-depth)",
        code="json_too_deep",
    )


def _parse_checked(raw: bytes, limits: RequestLimits) -> Any:
    """The JSON object in ``raw``, its shape checked (its depth was)."""
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, NaN, huge ints
        raise Refusal(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise Refusal(400, "the request body must be a JSON object", code="invalid_json")
    check_shape(body, limits)
    return body


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list | dict) else 0


def _message_items(messages: Any) -> int:
    """Messages plus their content parts: what a chat template iterates over."""
    if not isinstance(messages, list):
        return 0
    parts = (m.get("content") for m in messages if isinstance(m, dict))
    return len(messages) + sum(len(c) for c in parts if isinstance(c, list))


def check_shape(body: dict[str, Any], limits: RequestLimits) -> None:
    """Refuse a request whose lists are longer than the limits, naming field and flag."""
    prompt = body.get("prompt")
    batch = prompt if isinstance(prompt, list) and prompt and not _is_ids(prompt) else None
    checks = (
        ("messages", _message_items(body.get("messages")), "max_messages"),
        ("stop", _count(body.get("stop")), "max_stop"),
        ("stop_token_ids", _count(body.get("stop_token_ids")), "max_stop_token_ids"),
        ("logit_bias", _count(body.get("logit_bias")), "max_logit_bias"),
    )
    for param, count, limit_name in checks:
        if count > getattr(limits, limit_name):
            raise _shape_refusal(param, f"has {count} entries", limits, limit_name)
    for ids in batch or [prompt]:
        if _is_ids(ids) and len(ids) > limits.max_prompt_tokens:
            raise _shape_refusal("prompt", f"has {len(ids)} token ids", limits, "max_prompt_tokens")


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and (not value or not isinstance(value[0], str | list))


def _shape_refusal(param: str, what: str, limits: RequestLimits, limit_name: str) -> Refusal:
    flag = "--" + limit_name.replace("_", "-")
    return Refusal(
        400,
        f"'{param}' {what}; this server accepts at most {getattr(limits, limit_name)} ({flag})",
        param=param,
        code="request_too_large",
    )
