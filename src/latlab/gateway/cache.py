"""The response cache's policy over a store: TTL, max-age, and staying up when the store is not.

A store that fails (an unwritable file, an unreachable Redis) never fails a request: the gateway
serves uncached, says so once in its log and in ``latlab:gateway_cache_available``, counts each
failure, and tries the store again after a pause; when the store answers again it says so once.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from latlab.errors import ConfigError
from latlab.gateway.cachekey import CacheControl
from latlab.gateway.recording import Recording

log = logging.getLogger("latlab.gateway")
RETRY_STORE_AFTER_S = 5.0


class Store(Protocol):
    kind: str
    label: str

    async def open(self) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def stats(self) -> dict[str, int]: ...
    async def close(self) -> None: ...


def make_store(spec: str, *, max_bytes: int) -> Store | None:
    """``off`` -> None; ``sqlite:FILE`` -> SQLiteStore; ``redis://HOST:PORT/DB`` -> RedisStore."""
    if spec == "off":
        return None
    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:") :]
        if not path:
            raise ConfigError("--cache sqlite:FILE needs a file name, e.g. sqlite:gateway.db")
        from latlab.gateway.sqlite_store import SQLiteStore

        return SQLiteStore(path, max_bytes=max_bytes)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from latlab.gateway.redis_store import RedisStore

        return RedisStore(spec, max_bytes=max_bytes)
    raise ConfigError(f"--cache {spec!r}: use off, sqlite:FILE or redis://HOST:PORT/DB")


class ResponseCache:
    """Looks up and stores recordings; a failing store turns into misses, never errors."""

    def __init__(self, store: Store, *, ttl_s: float, metrics: Any) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.available = True
        self._retry_at = 0.0

    async def open(self) -> None:
        try:
            await self.store.open()
        except Exception as exc:
            self._failed(exc)
        else:
            self.metrics.cache_available.set(1)

    def _usable(self) -> bool:
        return self.available or time.monotonic() >= self._retry_at

    def _failed(self, exc: BaseException) -> None:
        self.metrics.cache_errors.inc()
        self._retry_at = time.monotonic() + RETRY_STORE_AFTER_S
        if self.available:
            self.available = False
            self.metrics.cache_available.set(0)
            log.warning(
                "response cache %s unavailable (%s: %s); serving uncached, retrying every %g s",
                self.store.label, type(exc).__name__, exc, RETRY_STORE_AFTER_S,
            )  # fmt: skip

    def _worked(self) -> None:
        if not self.available:
            self.available = True
            self.metrics.cache_available.set(1)
            log.warning("response cache %s available again", self.store.label)

    async def get(self, key: str, control: CacheControl) -> Recording | None:
        if not control.may_read or not self._usable():
            return None
        try:
            data = await self.store.get(key)
        except Exception as exc:
            self._failed(exc)
            return None
        self._worked()
        if data is None:
            return None
        try:
            recording = Recording.decode(data)
        except (ValueError, KeyError, TypeError):
            return None  # written by something else, or damaged: a miss, overwritten later
        if control.max_age_s is not None and time.time() - recording.created_s > control.max_age_s:
            return None
        return recording

    async def put(self, key: str, recording: Recording) -> None:
        if not self._usable():
            return
        try:
            await self.store.put(key, recording.encode(), self.ttl_s)
        except Exception as exc:
            self._failed(exc)
            return
        self._worked()

    async def close(self) -> None:
        try:
            await self.store.close()
        except Exception as exc:  # closing a broken connection: nothing left to do
            log.debug("closing the cache store failed: %s", exc)
