"""Both cache stores against the same contract: SQLite on disk, and a real Redis."""

import asyncio
import logging
import multiprocessing
import time

import pytest

from latlab.gateway.cache import ResponseCache, make_store
from latlab.gateway.cachekey import CacheControl
from latlab.gateway.metrics import GatewayMetrics
from latlab.gateway.recording import Recording
from latlab.gateway.redis_store import RedisStore
from latlab.gateway.sqlite_store import SQLiteStore


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["sqlite", "redis"])
def make(request, tmp_path):
    """A factory of stores of one kind, all sharing one backing file or server."""
    if request.param == "sqlite":
        return lambda max_bytes: SQLiteStore(tmp_path / "c.sqlite", max_bytes=max_bytes)
    url = request.getfixturevalue("flush_redis")
    return lambda max_bytes: RedisStore(url, max_bytes=max_bytes)


def test_put_get_and_ttl(make):
    async def go():
        store = make(10_000)
        await store.open()
        await store.put("a", b"alpha", 60)
        await store.put("b", b"beta", 0.05)
        assert await store.get("a") == b"alpha"
        assert await store.get("missing") is None
        await asyncio.sleep(0.1)
        assert await store.get("b") is None  # expired
        await store.put("a", b"alpha2", 60)  # overwrite keeps one entry
        assert await store.get("a") == b"alpha2"
        stats = await store.stats()
        await store.close()
        return stats

    stats = run(go())
    assert stats == {"entries": 1, "bytes": len(b"alpha2")}


def test_size_bound_evicts_least_recently_used(make):
    async def go():
        store = make(30)
        for key in ("k1", "k2", "k3"):
            await store.put(key, b"x" * 10, 60)
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.1)  # SQLite refreshes LRU time at most once a second
        assert await store.get("k1") is not None  # k1 is now the most recently used
        await store.put("k4", b"y" * 10, 60)
        got = {k: await store.get(k) is not None for k in ("k1", "k2", "k3", "k4")}
        await store.put("huge", b"z" * 31, 60)  # larger than the bound: not stored
        huge = await store.get("huge")
        stats = await store.stats()
        await store.close()
        return got, huge, stats

    got, huge, stats = run(go())
    assert got == {"k1": True, "k2": False, "k3": True, "k4": True}
    assert huge is None and stats["bytes"] <= 30


def _write_many(path: str, prefix: str) -> None:
    async def go():
        store = SQLiteStore(path, max_bytes=1 << 20)
        for i in range(50):
            await store.put(f"{prefix}{i}", b"v" * 100, 60)
        await store.close()

    asyncio.run(go())


def test_sqlite_file_is_shared_safely_by_several_processes(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(path, p)) for p in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    async def go():
        store = SQLiteStore(path, max_bytes=1 << 20)
        stats = await store.stats()
        await store.close()
        return stats

    assert run(go()) == {"entries": 150, "bytes": 150 * 100}


def _open_at_once(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        SQLiteStore(path, max_bytes=1 << 20)._conn()
        results.put("ok")
    except Exception as exc:  # what the test reports
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_sqlite_file_at_once_all_get_it(tmp_path):
    # Gateways (or --workers) starting together on a new cache file: switching it to WAL took a
    # lock SQLite's busy timeout does not wait for, and 12 of 180 such opens failed before.
    ctx, outcomes = multiprocessing.get_context("fork"), []
    for round_ in range(30):
        barrier, results = ctx.Barrier(3), ctx.Queue()
        path = str(tmp_path / f"new{round_}.sqlite")
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, results))
                 for _ in range(3)]  # fmt: skip
        for proc in procs:
            proc.start()
        outcomes += [results.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(30)
    assert [o for o in outcomes if o != "ok"] == []


def test_make_store_parses_the_flag(tmp_path):
    assert make_store("off", max_bytes=1) is None
    assert isinstance(make_store(f"sqlite:{tmp_path}/x.db", max_bytes=1), SQLiteStore)
    with pytest.raises(Exception, match="sqlite:FILE"):
        make_store("memcached://x", max_bytes=1)


@pytest.mark.parametrize("spec", ["sqlite:/dev/null/cannot/cache.sqlite", "redis://127.0.0.1:1/0"])
def test_a_broken_store_serves_uncached_and_says_so_once(spec, caplog):
    metrics = GatewayMetrics(lambda: [])
    cache = ResponseCache(make_store(spec, max_bytes=1 << 20), ttl_s=60, metrics=metrics)
    rec = Recording(body=b'{"ok":1}', created_s=time.time())

    async def go():
        await cache.open()
        for _ in range(3):
            await cache.put("k", rec)
            assert await cache.get("k", CacheControl()) is None
            cache._retry_at = 0  # retry at once: every call hits the broken store
        await cache.close()

    with caplog.at_level(logging.WARNING, logger="latlab.gateway"):
        run(go())
    unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(unavailable) == 1 and "serving uncached" in unavailable[0].getMessage()
    assert metrics.cache_available._value.get() == 0
    assert metrics.cache_errors._value.get() >= 3


def test_max_age_and_undecodable_entries_are_misses(tmp_path):
    metrics = GatewayMetrics(lambda: [])
    store = SQLiteStore(tmp_path / "c.sqlite", max_bytes=1 << 20)
    cache = ResponseCache(store, ttl_s=60, metrics=metrics)

    async def go():
        await cache.open()
        await cache.put("old", Recording(body=b"{}", created_s=time.time() - 100))
        await store.put("junk", b"not a recording", 60)
        old_ok = await cache.get("old", CacheControl()) is not None
        old_young = await cache.get("old", CacheControl.parse("max-age=10"))
        junk = await cache.get("junk", CacheControl())
        await cache.close()
        return old_ok, old_young, junk

    assert run(go()) == (True, None, None)
