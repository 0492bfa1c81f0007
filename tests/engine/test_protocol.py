"""The engine contract: latlab's AsyncLLM and the serve tests' fake both keep it."""

from __future__ import annotations

import asyncio

from latlab.engine import AsyncLLM, EngineConfig
from latlab.engine.protocol import Engine


def test_async_llm_keeps_the_engine_contract(tiny_model_dir):
    async def check() -> None:
        async with AsyncLLM(EngineConfig(model=str(tiny_model_dir))) as engine:
            assert isinstance(engine, Engine)
            assert engine.stats().kv_cache_tokens > 0 and engine.max_model_len > 0

    asyncio.run(check())


def test_the_serve_fake_engine_keeps_it_too():
    from tests.serve.fake_engine import FakeEngine

    assert isinstance(FakeEngine(), Engine)
