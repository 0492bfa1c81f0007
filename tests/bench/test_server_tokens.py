"""Counting on the server: a failed probe leaves no sibling probe running into the run."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from latlab.bench.server_tokens import USAGE, ServerTokenCounter
from latlab.bench.targets import OpenAITarget
from latlab.errors import TargetError


def test_a_failed_probe_cancels_its_siblings_before_count_returns():
    finished: list[str] = []
    cancelled: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        if prompt == " bad":
            return httpx.Response(500, json={"error": {"message": "no"}})
        try:
            await asyncio.sleep(0.3)  # a probe still in flight when its sibling fails
        except asyncio.CancelledError:
            cancelled.append(prompt)
            raise
        finished.append(prompt)
        return httpx.Response(200, json={"usage": {"prompt_tokens": 3}})

    async def scenario() -> None:
        target = OpenAITarget("http://127.0.0.1:9/v1", model="m", transport="httpx")
        target._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        counter = ServerTokenCounter(target)
        counter.method = USAGE
        with pytest.raises(TargetError, match="HTTP 500"):
            await counter.count([" slow", " bad", " slower"])
        await asyncio.sleep(0.5)  # what a leaked probe would still do meanwhile
        await target.aclose()

    asyncio.run(scenario())
    assert finished == [] and sorted(cancelled) == [" slow", " slower"]


def test_counts_come_back_in_the_order_asked():
    async def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"]
        return httpx.Response(200, json={"usage": {"prompt_tokens": len(prompt.split()) + 1}})

    async def scenario() -> list[int]:
        target = OpenAITarget("http://127.0.0.1:9/v1", model="m", transport="httpx")
        target._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        counter = ServerTokenCounter(target)
        counter.method = USAGE
        try:
            return await counter.count([" a b c", " a", " a b"])
        finally:
            await target.aclose()

    assert asyncio.run(scenario()) == [4, 2, 3]
