"""Per-tenant requests/min and tokens/min, atomic across gateway processes sharing Redis.

The algorithm is GCRA (a token bucket kept as one timestamp, the "theoretical arrival time"):
a limit of N per minute admits a burst of N, then one more every 60/N s, and a refusal knows
exactly when the next request would fit (``Retry-After``). Requests are counted when they are
admitted; tokens are charged when the response's ``usage`` is known, and a tenant whose token
bucket is in debt is refused until it refills (Envoy AI Gateway does the same: check at request
time, charge after).

With Redis the check and the increment are one Lua script run by the server, so two gateways can
never both take the last slot: the read-modify-write race that let 544 of 1,022 requests pass a
100 rpm limit in LiteLLM (#6938). Redis' clock is the only clock. If Redis cannot be reached the
gateway falls back to its in-process limiter (each process enforces the full limit on its own),
says so once in the log, and counts it in ``latlab:gateway_limit_store_errors_total``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from latlab.gateway.keys import Tenant

log = logging.getLogger("latlab.gateway")
_WINDOW_S = 60.0
_PREFIX = "latlab:gw:rl:"

# KEYS: requests TAT, tokens TAT. ARGV: rpm (0 = none), tpm (0 = none).
# Returns {allowed (1/0), retry_after_ms, which ("requests"/"tokens"/"")}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local window = 60000
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat - now > window then return {0, math.ceil(tat - now - window), 'tokens'} end
end
if rpm > 0 then
  local step = window / rpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  if tat + step - now > window then return {0, math.ceil(tat + step - now - window), 'requests'} end
  redis.call('SET', KEYS[1], tostring(tat + step), 'PX', math.ceil(tat + step - now) + 1000)
end
return {1, 0, ''}
"""
# KEYS: tokens TAT. ARGV: tpm, tokens.
_CHARGE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local step = 60000 / tonumber(ARGV[1])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + step * tonumber(ARGV[2])
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
return 1
"""


class MemoryLimiter:
    """GCRA in this process (the default without Redis; the fallback when Redis is down)."""

    def __init__(self) -> None:
        self._tat: dict[tuple[str, str], float] = {}

    async def acquire(self, tenant: Tenant) -> tuple[float, str] | None:
        """None when admitted; else (seconds until it would be, which limit)."""
        now = time.monotonic()
        if tenant.tokens_per_minute:
            tat = self._tat.get((tenant.name, "tokens"), 0.0)
            if tat - now > _WINDOW_S:
                return tat - now - _WINDOW_S, "tokens"
        if tenant.requests_per_minute:
            step = _WINDOW_S / tenant.requests_per_minute
            tat = max(self._tat.get((tenant.name, "requests"), 0.0), now)
            if tat + step - now > _WINDOW_S:
                return tat + step - now - _WINDOW_S, "requests"
            self._tat[(tenant.name, "requests")] = tat + step
        return None

    async def charge(self, tenant: Tenant, tokens: int) -> None:
        if not tenant.tokens_per_minute or tokens <= 0:
            return
        step = _WINDOW_S / tenant.tokens_per_minute
        key = (tenant.name, "tokens")
        self._tat[key] = max(self._tat.get(key, 0.0), time.monotonic()) + step * tokens

    async def close(self) -> None:
        return None


class RedisLimiter:
    """The same GCRA as one Lua script per decision, shared by every gateway on the server."""

    def __init__(self, url: str, metrics: Any) -> None:
        from latlab.gateway.redis_store import redis_client

        self._redis = redis_client(url)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._charge = self._redis.register_script(_CHARGE)
        self._fallback = MemoryLimiter()
        self._metrics = metrics
        self._down = False

    @staticmethod
    def _keys(tenant: Tenant) -> list[str]:
        return [f"{_PREFIX}{tenant.name}:requests", f"{_PREFIX}{tenant.name}:tokens"]

    def _failed(self, exc: BaseException) -> None:
        self._metrics.limit_store_errors.inc()
        if not self._down:
            self._down = True
            log.warning(
                "rate-limit store unreachable (%s: %s); limits are enforced per process until "
                "it answers again", type(exc).__name__, exc,
            )  # fmt: skip

    def _worked(self) -> None:
        if self._down:
            self._down = False
            log.warning("rate-limit store reachable again; limits are shared again")

    async def acquire(self, tenant: Tenant) -> tuple[float, str] | None:
        if not (tenant.requests_per_minute or tenant.tokens_per_minute):
            return None
        args = [tenant.requests_per_minute or 0, tenant.tokens_per_minute or 0]
        try:
            allowed, retry_ms, which = await self._acquire(keys=self._keys(tenant), args=args)
        except Exception as exc:
            self._failed(exc)
            return await self._fallback.acquire(tenant)
        self._worked()
        if int(allowed):
            return None
        which = which.decode() if isinstance(which, bytes) else str(which)
        return int(retry_ms) / 1000, which

    async def charge(self, tenant: Tenant, tokens: int) -> None:
        if not tenant.tokens_per_minute or tokens <= 0:
            return
        try:
            await self._charge(keys=self._keys(tenant)[1:], args=[tenant.tokens_per_minute, tokens])
        except Exception as exc:
            self._failed(exc)
            await self._fallback.charge(tenant, tokens)
            return
        self._worked()

    async def close(self) -> None:
        await self._redis.aclose()
