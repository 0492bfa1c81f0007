"""Fixtures: an app over the fake engine, served by uvicorn on a free loopback port."""

from __future__ import annotations

import pytest

from latlab.serve.app import create_app
from latlab.serve.server import running_server
from serve.fake_engine import MODEL, FakeEngine, FakeParams


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def url(engine: FakeEngine):
    with running_server(create_app(engine, MODEL, make_params=FakeParams)) as base:
        yield base
