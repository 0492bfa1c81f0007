"""A scrape of latlab serve's /metrics (the app on the fake engine, after a few requests)."""

from __future__ import annotations

import httpx
import pytest

from latlab.monitor.scrape import Scrape


@pytest.fixture(scope="session")
def latlab_scrape() -> Scrape:
    pytest.importorskip("fastapi")
    from serve.fake_engine import MODEL, FakeEngine, FakeParams

    from latlab.serve.app import create_app
    from latlab.serve.server import running_server

    app = create_app(FakeEngine(), MODEL, make_params=FakeParams)
    with running_server(app) as base:
        httpx.post(f"{base}/v1/completions", json={"prompt": "abc", "max_tokens": 4})
        return Scrape.parse(httpx.get(f"{base}/metrics").text)


@pytest.fixture(scope="session")
def latlab_server_url():
    """latlab serve's app (fake engine) with custom bucket edges: TTFT 0.05/0.3/2, ITL .02/.04."""
    pytest.importorskip("fastapi")
    from serve.fake_engine import MODEL, FakeEngine, FakeParams

    from latlab.serve.app import create_app
    from latlab.serve.prometheus import HistogramBuckets
    from latlab.serve.server import running_server

    buckets = HistogramBuckets(ttft=(0.05, 0.3, 2.0), itl=(0.02, 0.04))
    app = create_app(FakeEngine(), MODEL, make_params=FakeParams, buckets=buckets)
    with running_server(app) as base:
        yield base


@pytest.fixture(scope="session")
def gateway_scrape(tmp_path_factory) -> Scrape:
    """A real latlab gateway's /metrics (SQLite cache, in front of the stub server) after a
    miss, a hit and an error: every gateway series a dashboard or alert reads is there."""
    from latlab.gateway.config import GatewayConfig
    from latlab.gateway.server import running_gateway
    from latlab.testing.stub_server import StubServer

    cache = tmp_path_factory.mktemp("gateway") / "cache.sqlite"
    request = {"model": "stub-model", "prompt": "monitor me", "max_tokens": 4, "temperature": 0,
               "stream": True}  # fmt: skip
    with StubServer(ttft_s=0.005, itl_s=0.001) as stub_url:
        config = GatewayConfig(upstreams=[stub_url], cache=f"sqlite:{cache}", route="prefix")
        with running_gateway(config) as (base, _), httpx.Client(trust_env=False) as client:
            for _ in range(2):  # a miss, then a hit
                client.post(f"{base}/v1/completions", json=request).raise_for_status()
            client.post(f"{base}/v1/completions", json={"prompt": 1})  # a 400
            return Scrape.parse(client.get(f"{base}/metrics").text)
