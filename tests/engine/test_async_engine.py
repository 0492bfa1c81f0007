"""AsyncLLM: streaming, cancellation frees blocks, overload and capacity errors."""

from __future__ import annotations

import asyncio
import time

import pytest

from latlab.engine import AsyncLLM, EngineConfig, SamplingParams
from latlab.errors import CapacityError, ConfigError, OverloadedError

from ._reference import hf_greedy, mixed_prompts


async def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _collect(engine: AsyncLLM, prompt, params):
    outs = [o async for o in engine.generate(prompt, params)]
    return outs


def test_streams_concurrently_and_matches_transformers(tiny_model_dir):
    prompts = mixed_prompts(4)
    params = SamplingParams(max_tokens=8)

    async def main():
        async with AsyncLLM(EngineConfig(model=str(tiny_model_dir))) as engine:
            results = await asyncio.gather(*(_collect(engine, p, params) for p in prompts))
            return results, engine.stats()

    results, stats = asyncio.run(main())
    expected = hf_greedy(tiny_model_dir, prompts, 8)
    for outs, ref in zip(results, expected, strict=True):
        assert outs[-1].finished and outs[-1].finish_reason in ("length", "stop")
        assert [t for o in outs for t in o.new_token_ids] == ref == outs[-1].token_ids
        assert "".join(o.new_text for o in outs) == outs[-1].text
        m = outs[-1].metrics
        assert m.arrival_ns <= m.first_scheduled_ns <= m.first_token_ns <= m.finished_ns
    assert stats.num_running == 0 and stats.kv_cache_usage == 0.0
    assert stats.generation_tokens_total == sum(len(r) for r in expected)


def test_cancelling_the_iterator_frees_blocks_at_once(tiny_model_dir):
    async def main():
        async with AsyncLLM(EngineConfig(model=str(tiny_model_dir), block_size=4)) as engine:
            before = engine.stats().kv_cache_usage
            stream = engine.generate(mixed_prompts(2)[1], SamplingParams(max_tokens=1500))
            first = await stream.__anext__()
            assert not first.finished
            await _wait_for(lambda: engine.stats().kv_cache_usage > before)
            await stream.aclose()  # what a disconnecting client / cancelled task does
            await _wait_for(lambda: engine.stats().kv_cache_usage == before, timeout=5)
            assert engine.stats().num_running == 0

            task = asyncio.create_task(_collect(engine, [5, 6, 7], SamplingParams(max_tokens=1500)))
            await _wait_for(lambda: engine.stats().num_running == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _wait_for(lambda: engine.stats().kv_cache_usage == before, timeout=5)

    asyncio.run(main())


def test_overloaded_when_waiting_queue_is_full(tiny_model_dir):
    config = EngineConfig(model=str(tiny_model_dir), max_num_seqs=1, max_waiting=2)
    long = SamplingParams(max_tokens=1000)

    async def main():
        async with AsyncLLM(config) as engine:
            running = engine.generate([1, 2, 3], long)
            await running.__anext__()  # admitted and running
            queued = [asyncio.create_task(_collect(engine, [4, 5], long)) for _ in range(2)]
            await asyncio.sleep(0)  # let both register
            with pytest.raises(OverloadedError, match="waiting queue is full"):
                await engine.generate([6], long).__anext__()
            for t in queued:
                t.cancel()
            await running.aclose()
            await asyncio.gather(*queued, return_exceptions=True)
            await _wait_for(lambda: engine.stats().kv_cache_usage == 0.0)

    asyncio.run(main())


def test_capacity_and_config_errors(tiny_model_dir):
    config = EngineConfig(model=str(tiny_model_dir), block_size=4, kv_cache_bytes=8 * 4 * 512)

    async def main():
        async with AsyncLLM(config) as engine:
            assert engine.stats().num_kv_blocks == 8
            with pytest.raises(CapacityError, match="KV blocks"):
                await engine.generate([1] * 20, SamplingParams(max_tokens=20)).__anext__()
            with pytest.raises(CapacityError, match="max_model_len"):
                too_long = SamplingParams(max_tokens=engine.max_model_len)
                await engine.generate([1, 2], too_long).__anext__()
            with pytest.raises(ConfigError, match="params"):
                await engine.generate([1, 2], {"max_tokens": 3}).__anext__()
            with pytest.raises(ConfigError, match="prompt"):
                await engine.generate([], SamplingParams()).__anext__()
            # the engine still serves after rejecting
            outs = await _collect(engine, [1, 2, 3], SamplingParams(max_tokens=3, ignore_eos=True))
            assert outs[-1].finished and len(outs[-1].token_ids) == 3

    asyncio.run(main())
