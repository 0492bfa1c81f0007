"""tokens/min counts every answer a key receives: cached, coalesced and unreported ones too.

Against a real Redis (the shared limiter), as the limits hold across gateway processes.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis

from gateway.conftest import gateway
from gateway.helpers import apost, body, post
from latlab.gateway.keys import hash_key

_TOKENS_KEY = "latlab:gw:rl:{}:tokens"


def _keys(tmp_path, *entries: str):
    path = tmp_path / "keys.toml"
    path.write_text("".join(f'[[keys]]\nsha256 = "{hash_key(name)}"\ntenant = "{name}"\n{more}\n'
                            for name, more in (e.split("|") for e in entries)))  # fmt: skip
    return str(path)


def _charged(redis_url: str, tenant: str, tokens_per_minute: int) -> float:
    """Tokens charged so far: how far the tenant's GCRA timestamp runs ahead of Redis' clock."""
    client = redis.Redis.from_url(redis_url)
    try:
        tat = float(client.get(_TOKENS_KEY.format(tenant)) or 0)
        secs, micros = client.time()
    finally:
        client.close()
    return (tat - (secs * 1000 + micros / 1000)) / (60000 / tokens_per_minute)


def test_cache_hits_spend_the_keys_tokens_unless_the_key_says_not(stub, flush_redis, tmp_path):
    # "hello gateway" + 6 tokens = 8 tokens an answer; 20/min admits until 20 are spent.
    keys = _keys(tmp_path, "counted|tokens_per_minute = 20",
                 "free|tokens_per_minute = 20\ncount_cache_hits = false")  # fmt: skip
    cache = f"sqlite:{tmp_path / 'cache.sqlite'}"
    with gateway(upstreams=[stub.url], cache=cache, api_keys=keys, limits_redis=flush_redis) as (
        url,
        _,
    ):
        counted = [post(url, body(), authorization="Bearer counted") for _ in range(4)]
        free = [post(url, body(), authorization="Bearer free") for _ in range(4)]
    assert [r.status for r in counted] == [200, 200, 200, 429]
    assert [r.cache for r in counted[:3]] == ["miss", "hit", "hit"]
    assert "tokens per minute" in counted[3].json()["error"]["message"]
    assert [(r.status, r.cache) for r in free] == [(200, "miss")] + [(200, "hit")] * 3


def test_coalesced_and_usage_less_answers_are_charged(stub, flush_redis, tmp_path):
    # 6/min: one token is 10 s of the bucket, so the seconds a test takes do not blur the count.
    keys = _keys(tmp_path, "pair|tokens_per_minute = 6", "quiet|tokens_per_minute = 6")
    with gateway(upstreams=[stub.url], api_keys=keys, limits_redis=flush_redis) as (url, _):

        async def pair():
            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                calls = [apost(client, url, body("shared by two"), authorization="Bearer pair")
                         for _ in range(2)]  # fmt: skip
                return await asyncio.gather(*calls)

        both = asyncio.run(pair())
        quiet = post(url, body("no usage asked", stream_options=None),
                     authorization="Bearer quiet")  # fmt: skip
    assert sorted(r.cache for r in both) == ["bypass", "coalesced"]
    usage = [b"usage" in r.body for r in both]
    assert all(usage) and b'"usage"' not in quiet.body
    assert _charged(flush_redis, "pair", 6) == pytest.approx(2 * (3 + 6), abs=0.5)
    # no usage: len("no usage asked") // 4 = 3 prompt tokens + 6 answer events
    assert len(quiet.events) == 7
    assert _charged(flush_redis, "quiet", 6) == pytest.approx(3 + 6, abs=0.5)
