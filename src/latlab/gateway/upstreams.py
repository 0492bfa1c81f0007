"""The servers behind the gateway: their load as the gateway sees it, their health, their models.

Each upstream keeps a pool of keep-alive connections (latlab's raw HTTP/1.1 client, the bench's
own hot path) and counts its outstanding requests and tokens, which least-load and the prefix
router's load bound read. A health loop asks every upstream for ``/v1/models`` (liveness and
the model list in one call); ``eject_after`` failures in a row, from the loop or from real
requests, eject an upstream, and one good answer readmits it.

``https://`` upstreams are reached over TLS, verified against the system's trust store or a CA
bundle, the gateway showing its own certificate to those that ask (mutual TLS); an upstream's
API key (the gateway's own, per upstream) is sent as ``Authorization:
Bearer``. A client's own ``Authorization`` header is never sent upstream: it is a gateway key.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from latlab.bench.rawhttp import RawHTTPPool
from latlab.errors import ConfigError

log = logging.getLogger("latlab.gateway")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CLOSED = (
    "closed the connection",
    "disconnected",
    "connection_reset",
    "reset by peer",
    "broken pipe",
)
_CLIENT_CERT_HINT = (
    "; an https upstream that closes connections before answering may want a client "
    "certificate: give the gateway one with --upstream-client-cert"
)


@dataclass(kw_only=True, slots=True)
class UpstreamAccess:
    """How the gateway reaches its upstreams: TLS verification and its own API keys."""

    ca_bundle: str | None = None  # PEM file of CAs for https:// upstreams; None = system store
    verify: bool = True  # False skips certificate checks (a test rig, never production)
    # Mutual TLS: the gateway's own certificate (PEM, chain allowed) and its private key (PEM;
    # None when the certificate file holds the key too), shown to upstreams that ask for one.
    client_cert: str | None = None
    client_key: str | None = None
    api_keys: dict[str, str] = field(default_factory=dict, repr=False)  # upstream URL -> key
    default_api_key: str | None = field(default=None, repr=False)  # for the others

    def __post_init__(self) -> None:
        self.api_keys = {normalize_url(url): key for url, key in self.api_keys.items()}
        for key in (*self.api_keys.values(), self.default_api_key):
            if key is not None and (not key or any(c in key for c in "\r\n ")):
                raise ConfigError("an upstream API key must be one line without spaces")

    def tls_context(self) -> ssl.SSLContext:
        """Certificates and host names checked (unless ``verify`` is off), TLS 1.2 or newer."""
        try:
            context = ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--upstream-ca-bundle {self.ca_bundle}: cannot load it as PEM CA "
                f"certificates ({exc})"
            ) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            self._load_client_certificate(context)
        return context

    def _load_client_certificate(self, context: ssl.SSLContext) -> None:
        """The gateway's certificate for mutual TLS; a ConfigError that says which file is
        wrong (missing, not PEM, a key that does not match, a key with a passphrase)."""
        for flag, path in (("cert", self.client_cert), ("key", self.client_key)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"--upstream-client-{flag} {path}: no such file")
        try:
            context.load_cert_chain(self.client_cert, self.client_key, password=_no_passphrase)
        except (OSError, ssl.SSLError, TypeError) as exc:
            key = self.client_key or self.client_cert
            raise ConfigError(
                f"--upstream-client-cert {self.client_cert} with key {key}: cannot load them as "
                f"a PEM certificate and its unencrypted private key ({exc})"
            ) from None

    def key_for(self, url: str) -> str | None:
        return self.api_keys.get(normalize_url(url), self.default_api_key)


def _no_passphrase() -> str:
    """Asked only for an encrypted key: the gateway runs unattended, so it cannot prompt."""
    raise TypeError("the private key is encrypted; give it without a passphrase")


def normalize_url(url: str) -> str:
    """``scheme://host:port[/prefix]`` without a trailing ``/v1``: how upstreams are named."""
    parts = urlsplit(url.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"--upstream {url!r}: give an http://HOST:PORT or https://HOST:PORT URL")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


class Upstream:
    """One OpenAI-compatible server: where it is, how loaded, whether admitted."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        tls: ssl.SSLContext | None = None,
        api_key: str | None = None,
        client_cert: bool = False,
    ) -> None:
        self.url = normalize_url(url)
        parts = urlsplit(self.url)
        self.host = parts.hostname or ""
        self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self.prefix = parts.path  # anything before /v1 (a server mounted under a path)
        self.tls = tls if parts.scheme == "https" else None
        if parts.scheme == "https" and tls is None:
            self.tls = UpstreamAccess().tls_context()
        # The gateway's own key for this upstream; never the client's (that is a gateway key).
        self.auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.pool = RawHTTPPool(self.host, self.port, connect_timeout_s, ssl=self.tls,
                                host_header=parts.netloc)  # fmt: skip
        # A TLS upstream that wants a client certificate it did not get just closes the
        # connection; with none configured, its failures say what to try.
        self._hint = _CLIENT_CERT_HINT if self.tls is not None and not client_cert else ""
        self.healthy = True
        self.failures = 0
        self.last_error = ""
        self.outstanding = 0
        self.outstanding_tokens = 0
        self._cards: list[dict[str, Any]] = []
        self.models: frozenset[str] = frozenset()  # the cards' ids, read on every request
        self.checked = False  # True once a health check answered

    def __repr__(self) -> str:
        return f"Upstream({self.url}, healthy={self.healthy}, outstanding={self.outstanding})"

    def path(self, endpoint: str) -> str:
        return f"{self.prefix}/v1{endpoint}"

    @property
    def model_cards(self) -> list[dict[str, Any]]:
        """The upstream's ``/v1/models`` entries, as its last health check returned them."""
        return self._cards

    @model_cards.setter
    def model_cards(self, cards: list[dict[str, Any]]) -> None:
        self._cards = cards
        self.models = frozenset(str(c.get("id")) for c in cards)

    def begin(self, tokens: int) -> None:
        self.outstanding += 1
        self.outstanding_tokens += tokens

    def end(self, tokens: int) -> None:
        self.outstanding -= 1
        self.outstanding_tokens -= tokens

    def failed(self, reason: str, *, eject_after: int) -> None:
        self.failures += 1
        if self._hint and any(marker in reason.lower() for marker in _CLOSED):
            reason += self._hint
        self.last_error = reason
        if self.healthy and self.failures >= eject_after:
            self.healthy = False
            log.warning(
                "upstream %s ejected after %d failures: %s", self.url, self.failures, reason
            )

    def succeeded(self) -> None:
        self.failures = 0
        if not self.healthy:
            self.healthy = True
            log.warning("upstream %s readmitted", self.url)


class UpstreamSet:
    """All upstreams, the health loop, and which of them may take a request for a model."""

    def __init__(
        self,
        urls: list[str],
        *,
        health_interval_s: float = 2.0,
        eject_after: int = 2,
        access: UpstreamAccess | None = None,
    ) -> None:
        if not urls:
            raise ConfigError("give at least one --upstream URL")
        access = access or UpstreamAccess()
        has_https = any(u.strip().startswith("https:") for u in urls)
        if access.client_cert and not has_https:
            raise ConfigError("--upstream-client-cert is for https:// upstreams; none is given")
        if access.client_key and not access.client_cert:
            raise ConfigError("--upstream-client-key needs --upstream-client-cert")
        tls = access.tls_context() if has_https else None
        if tls is not None and not access.verify:
            log.warning("TLS certificates of https:// upstreams are NOT verified")
        names = [normalize_url(u) for u in urls]
        unknown = set(access.api_keys) - set(names)
        if unknown:
            raise ConfigError(f"an upstream key names {', '.join(sorted(unknown))}, which is "
                              "not an --upstream; use the same URL")  # fmt: skip
        self.all = [Upstream(u, tls=tls, api_key=access.key_for(u),
                             client_cert=bool(access.client_cert)) for u in names]  # fmt: skip
        if len({u.url for u in self.all}) != len(self.all):
            raise ConfigError("the same --upstream is listed twice")
        self._tls = tls
        self.health_interval_s = health_interval_s
        self.eject_after = eject_after
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """One health round now (so /v1/models is known), then one every interval."""
        self._client = httpx.AsyncClient(timeout=2.0, trust_env=False, verify=self._tls or True)
        await self.check_all()
        self._task = asyncio.create_task(self._loop(), name="latlab-gateway-health")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.check_all()

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(u) for u in self.all))

    async def _check(self, up: Upstream) -> None:
        assert self._client is not None
        try:
            resp = await self._client.get(f"{up.url}/v1/models", headers=up.auth)
            if resp.status_code in (401, 403):
                raise ValueError(f"HTTP {resp.status_code}: the upstream refused the gateway's "
                                 "key (--upstream-key-file)")  # fmt: skip
            if resp.status_code != 200:
                raise ValueError(f"HTTP {resp.status_code}")
            cards = resp.json().get("data")
            up.model_cards = [c for c in cards if isinstance(c, dict)] if cards else []
        except Exception as exc:
            up.failed(f"health check: {type(exc).__name__}: {exc}", eject_after=self.eject_after)
            return
        up.checked = True
        up.succeeded()

    def candidates(self, model: str | None) -> list[Upstream]:
        """Admitted upstreams that serve ``model`` (any admitted one when it is not named)."""
        healthy = [u for u in self.all if u.healthy]
        if model is None:
            return healthy
        return [u for u in healthy if not u.checked or model in u.models]

    def known_model(self, model: str) -> bool:
        """False only when every upstream's list is known and none lists ``model``."""
        if not all(u.checked for u in self.all):
            return True
        return any(model in u.models for u in self.all)

    def served_models(self) -> list[str]:
        return sorted({m for u in self.all for m in u.models})

    def models_response(self) -> dict[str, Any]:
        """``/v1/models`` merged from the admitted upstreams (each model once)."""
        seen: dict[str, dict[str, Any]] = {}
        for up in self.all:
            if up.healthy:
                for card in up.model_cards:
                    seen.setdefault(str(card.get("id")), card)
        return {"object": "list", "data": list(seen.values())}

    def health(self) -> tuple[bool, dict[str, Any]]:
        report = {
            u.url: {"healthy": u.healthy, "outstanding": u.outstanding, "last_error": u.last_error}
            for u in self.all
        }
        return any(u.healthy for u in self.all), {"upstreams": report, "time": time.time()}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        for up in self.all:
            up.pool.close()
