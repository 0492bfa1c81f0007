"""The servers behind the gateway: their load as the gateway sees it, their health, their models.

Each upstream keeps a pool of keep-alive connections (latlab's raw HTTP/1.1 client, the bench's
own hot path) and counts its outstanding requests and tokens, which least-load and the prefix
router's load bound read. A health loop asks every upstream for ``/v1/models`` (liveness and
the model list in one call); ``eject_after`` failures in a row, from the loop or from real
requests, eject an upstream, and one good answer readmits it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from latlab.bench.rawhttp import RawHTTPPool
from latlab.errors import ConfigError

log = logging.getLogger("latlab.gateway")


class Upstream:
    """One OpenAI-compatible server: where it is, how loaded, whether admitted."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(
                f"--upstream {url!r}: give a plain http://HOST:PORT URL (TLS to upstreams is "
                "not supported; keep the gateway next to its servers)"
            )
        path = parts.path.rstrip("/")
        if path.endswith("/v1"):
            path = path[:-3]
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = path  # anything before /v1 (a server mounted under a path)
        self.url = f"http://{parts.netloc}{path}"
        self.pool = RawHTTPPool(self.host, self.port, connect_timeout_s)
        self.healthy = True
        self.failures = 0
        self.last_error = ""
        self.outstanding = 0
        self.outstanding_tokens = 0
        self.model_cards: list[dict[str, Any]] = []
        self.checked = False  # True once a health check answered

    def __repr__(self) -> str:
        return f"Upstream({self.url}, healthy={self.healthy}, outstanding={self.outstanding})"

    def path(self, endpoint: str) -> str:
        return f"{self.prefix}/v1{endpoint}"

    @property
    def models(self) -> set[str]:
        return {str(c.get("id")) for c in self.model_cards}

    def begin(self, tokens: int) -> None:
        self.outstanding += 1
        self.outstanding_tokens += tokens

    def end(self, tokens: int) -> None:
        self.outstanding -= 1
        self.outstanding_tokens -= tokens

    def failed(self, reason: str, *, eject_after: int) -> None:
        self.failures += 1
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
        self, urls: list[str], *, health_interval_s: float = 2.0, eject_after: int = 2
    ) -> None:
        if not urls:
            raise ConfigError("give at least one --upstream URL")
        self.all = [Upstream(u) for u in urls]
        if len({u.url for u in self.all}) != len(self.all):
            raise ConfigError("the same --upstream is listed twice")
        self.health_interval_s = health_interval_s
        self.eject_after = eject_after
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """One health round now (so /v1/models is known), then one every interval."""
        self._client = httpx.AsyncClient(timeout=2.0, trust_env=False)
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
            resp = await self._client.get(f"{up.url}/v1/models")
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
