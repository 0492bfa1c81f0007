"""Several gateways sharing one real Redis: the cache and the rate limit hold across them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from gateway.conftest import gateway
from gateway.helpers import apost, body, post
from latlab.gateway.keys import hash_key
from latlab.procs import ManagedProcess, ProcessSpec, free_port


def test_two_gateways_share_the_redis_cache(stub, flush_redis):
    with (
        gateway(upstreams=[stub.url], cache=flush_redis) as (a, _),
        gateway(upstreams=[stub.url], cache=flush_redis) as (b, _),
    ):
        first = post(a, body("shared across hosts"))
        second = post(b, body("shared across hosts"))
    assert (first.cache, second.cache) == ("miss", "hit")
    assert second.events == first.events


def test_unreachable_redis_cache_serves_uncached(stub):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with gateway(upstreams=[stub.url], cache=dead) as (url, _):
        replies = [post(url, body("no redis")) for _ in range(2)]
        text = httpx.get(url + "/metrics", trust_env=False).text
    assert [r.status for r in replies] == [200, 200]
    assert [r.cache for r in replies] == ["miss", "miss"]
    assert "latlab:gateway_cache_available 0.0" in text


def _start_gateway(upstream: str, redis_url: str, keys: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    latlab = str(Path(sys.executable).parent / "latlab")
    argv = [latlab, "gateway", "--upstream", upstream,
            "--port", str(port), "--cache", redis_url, "--api-keys", keys]  # fmt: skip
    proc = ManagedProcess(ProcessSpec(argv=argv, name="latlab-gateway")).start()
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/health", timeout_s=60)
    return proc, url


@pytest.mark.slow
def test_a_limit_holds_across_two_gateway_processes(stub, flush_redis, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nsha256 = "{hash_key("k")}"\ntenant = "t"\nrequests_per_minute = 20\n'
    )
    procs = [_start_gateway(stub.url, flush_redis, str(keys)) for _ in range(2)]
    try:

        async def go():
            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                calls = [apost(client, procs[i % 2][1], body(f"r{i}", temperature=0.5),
                               authorization="Bearer k") for i in range(60)]  # fmt: skip
                return await asyncio.gather(*calls)

        replies = asyncio.run(go())
    finally:
        for proc, _ in procs:
            proc.stop()
    statuses = [r.status for r in replies]
    assert statuses.count(200) == 20 and statuses.count(429) == 40
    assert all(int(r.headers["retry-after"]) >= 1 for r in replies if r.status == 429)
    assert all(not proc.alive() for proc, _ in procs)
