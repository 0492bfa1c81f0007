"""The response cache in Redis, for gateways on several hosts (``redis.asyncio``).

Each entry is a Redis string with its TTL. The byte bound and LRU order are kept by two Lua
scripts, so every step is atomic however many gateways share the server: a sorted set of last
use, a sorted set of expiry, a hash of sizes and a byte total. A write evicts expired entries
and then the least recently used until the total fits. (Redis' own ``maxmemory-policy`` can be
set as a second guard; the bound here holds without touching the server's configuration.)
"""

from __future__ import annotations

from typing import Any

_PREFIX = "latlab:gw:cache:"
_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
_DROP = """
local function drop(k)
  local s = redis.call('HGET', p .. 'size', k)
  if s then
    redis.call('DECRBY', p .. 'bytes', s)
    redis.call('HDEL', p .. 'size', k)
  end
  redis.call('ZREM', p .. 'lru', k)
  redis.call('ZREM', p .. 'exp', k)
  redis.call('DEL', p .. 'e:' .. k)
end
"""
_PUT = (
    "local p, key, value = ARGV[1], ARGV[2], ARGV[3] "
    "local ttl, max = tonumber(ARGV[4]), tonumber(ARGV[5]) "
    + _NOW_MS
    + _DROP
    + """
for _, k in ipairs(redis.call('ZRANGEBYSCORE', p .. 'exp', '-inf', now, 'LIMIT', 0, 100)) do
  drop(k)
end
drop(key)
local size = string.len(value)
if size > max then return 0 end
redis.call('SET', p .. 'e:' .. key, value, 'PX', ttl)
redis.call('ZADD', p .. 'lru', now, key)
redis.call('ZADD', p .. 'exp', now + ttl, key)
redis.call('HSET', p .. 'size', key, size)
redis.call('INCRBY', p .. 'bytes', size)
while tonumber(redis.call('GET', p .. 'bytes') or '0') > max do
  local oldest = redis.call('ZRANGE', p .. 'lru', 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
end
return 1
"""
)
_GET = (
    "local p, key = ARGV[1], ARGV[2] "
    "local v = redis.call('GET', p .. 'e:' .. key) "
    "if v then " + _NOW_MS + "redis.call('ZADD', p .. 'lru', 'XX', now, key) end "
    "return v"
)


def redis_client(url: str) -> Any:
    """A ``redis.asyncio`` client for the gateway: few connections, short timeouts.

    A bounded pool queues a burst of commands on a few connections instead of opening one per
    request (which, under load, times out and would count as Redis being down); an unreachable
    server costs a request about a second at worst, not a hung request.
    """
    from redis import asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=16, timeout=2.0, socket_connect_timeout=1.0, socket_timeout=2.0
    )
    return aioredis.Redis(connection_pool=pool)


class RedisStore:
    """``get``/``put`` of encoded recordings in Redis, with TTL and an LRU byte bound."""

    kind = "redis"

    def __init__(self, url: str, *, max_bytes: int, prefix: str = _PREFIX) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.prefix = prefix
        self._redis = redis_client(url)
        self._put = self._redis.register_script(_PUT)
        self._get = self._redis.register_script(_GET)

    @property
    def label(self) -> str:
        return _redacted(self.url)

    async def open(self) -> None:
        await self._redis.ping()

    async def get(self, key: str) -> bytes | None:
        value = await self._get(args=[self.prefix, key])
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        await self._put(args=[self.prefix, key, value, ttl_ms, self.max_bytes])

    async def stats(self) -> dict[str, int]:
        size = await self._redis.get(self.prefix + "bytes")
        entries = await self._redis.zcard(self.prefix + "lru")
        return {"entries": int(entries), "bytes": int(size or 0)}

    async def close(self) -> None:
        await self._redis.aclose()


def _redacted(url: str) -> str:
    """The URL without a password (it appears in logs and metrics labels)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
