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
