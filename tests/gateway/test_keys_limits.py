import asyncio
import logging

import pytest

from latlab.errors import ConfigError
from latlab.gateway.keys import Tenant, hash_key, load_keys
from latlab.gateway.limits import MemoryLimiter, RedisLimiter
from latlab.gateway.metrics import GatewayMetrics

KEY = "sk-test-0123456789abcdef"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_and_yaml_keys_files(tmp_path):
    toml = write(
        tmp_path,
        "keys.toml",
        f"""
[[keys]]
sha256 = "{hash_key(KEY)}"
tenant = "team-a"
requests_per_minute = 10
cache_sampled = true
""",
    )
    yaml = write(tmp_path, "keys.yaml", f"keys:\n  - sha256: {hash_key(KEY)}\n    tenant: b\n")
    ring = load_keys(toml)
    tenant = ring.lookup(f"Bearer {KEY}")
    assert tenant == Tenant(name="team-a", requests_per_minute=10, cache_sampled=True)
    assert ring.lookup("Bearer wrong") is None
    assert ring.lookup(KEY) is None  # not a bearer token
    assert ring.lookup(None) is None
    assert load_keys(yaml).lookup(f"bearer  {KEY} ").name == "b"


@pytest.mark.parametrize("body,match", [
    ('[[keys]]\nsha256 = "sk-plain-key"\ntenant = "a"\n', "never put the key itself"),
    (f'[[keys]]\nsha256 = "{hash_key(KEY)}"\n', "tenant"),
    (f'[[keys]]\nsha256 = "{hash_key(KEY)}"\ntenant = "a"\nrequests_per_minute = 0\n',
     "positive integer"),
    (f'[[keys]]\nsha256 = "{hash_key(KEY)}"\ntenant = "a"\nrpm = 5\n', "unknown field"),
    (f'[[keys]]\nsha256 = "{hash_key(KEY)}"\ntenant = "a"\ncount_cache_hits = "no"\n',
     "true or false"),
    ("keys = []\n", "non-empty list"),
    ("[[keys]\n", "not valid TOML"),
])  # fmt: skip
def test_bad_keys_files_say_what_is_wrong(tmp_path, body, match):
    with pytest.raises(ConfigError, match=match):
        load_keys(write(tmp_path, "k.toml", body))


def test_keys_file_must_exist_and_have_a_known_suffix(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"\.toml, \.yaml or \.yml"):
        load_keys(write(tmp_path, "keys.json", "{}"))


def test_memory_limiter_admits_a_burst_then_says_when_to_retry():
    async def go():
        limiter = MemoryLimiter()
        tenant = Tenant(name="t", requests_per_minute=6)
        results = [await limiter.acquire(tenant) for _ in range(8)]
        return results

    results = asyncio.run(go())
    assert results[:6] == [None] * 6
    retry_s, which = results[6]
    assert which == "requests" and 9.0 < retry_s <= 10.0  # one slot every 10 s


def test_tokens_are_charged_after_and_refuse_while_in_debt():
    async def go():
        limiter = MemoryLimiter()
        tenant = Tenant(name="t", tokens_per_minute=100)
        first = await limiter.acquire(tenant)
        await limiter.charge(tenant, 250)  # a response larger than the whole budget
        return first, await limiter.acquire(tenant)

    first, second = asyncio.run(go())
    assert first is None and second[1] == "tokens" and 85 < second[0] <= 90


def test_redis_limit_is_exact_under_concurrency_from_two_clients(flush_redis):
    tenant = Tenant(name="shared", requests_per_minute=25)

    async def go():
        a = RedisLimiter(flush_redis, GatewayMetrics(lambda: []))
        b = RedisLimiter(flush_redis, GatewayMetrics(lambda: []))
        calls = [(a if i % 2 else b).acquire(tenant) for i in range(100)]
        results = await asyncio.gather(*calls)
        await a.close()
        await b.close()
        return results

    results = asyncio.run(go())
    assert sum(r is None for r in results) == 25
    assert {r[1] for r in results if r is not None} == {"requests"}


def test_unreachable_redis_falls_back_to_a_per_process_limit(caplog):
    metrics = GatewayMetrics(lambda: [])
    tenant = Tenant(name="t", requests_per_minute=2, tokens_per_minute=10)

    async def go():
        limiter = RedisLimiter("redis://127.0.0.1:1/0", metrics)
        out = [await limiter.acquire(tenant) for _ in range(3)]
        await limiter.charge(tenant, 5)
        await limiter.close()
        return out

    with caplog.at_level(logging.WARNING, logger="latlab.gateway"):
        results = asyncio.run(go())
    assert results[:2] == [None, None] and results[2][1] == "requests"
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
    assert metrics.limit_store_errors._value.get() == 4
