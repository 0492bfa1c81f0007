"""Small fakes for runner tests: an async token generator and an AsyncLLM look-alike."""

import asyncio
import time
from dataclasses import dataclass, field


class Gauge:
    """Counts requests in flight and remembers the peak."""

    def __init__(self):
        self.now = 0
        self.peak = 0
        self.calls = 0

    def enter(self):
        self.now += 1
        self.calls += 1
        self.peak = max(self.peak, self.now)

    def leave(self):
        self.now -= 1


def make_stream(gauge=None, ttft_s=0.005, itl_s=0.002, tokens=None):
    """fn(prompt, max_tokens) -> async iterator of text tokens."""

    async def stream(prompt, max_tokens):
        if gauge is not None:
            gauge.enter()
        try:
            await asyncio.sleep(ttft_s)
            for i in range(tokens or max_tokens):
                if i:
                    await asyncio.sleep(itl_s)
                yield f" t{i}"
        finally:
            if gauge is not None:
                gauge.leave()

    return stream


def blocking_stream(prompt, max_tokens):
    """A sync generator: runs in its own thread, may block."""
    for i in range(max_tokens):
        time.sleep(0.002)
        yield [i]


@dataclass
class FakeOutput:
    new_token_ids: list
    prompt_token_ids: list
    finished: bool = False
    finish_reason: str | None = None


@dataclass
class FakeParams:
    max_tokens: int = 16
    temperature: float = 0.0
    ignore_eos: bool = False
    min_tokens: int = 0


@dataclass
class FakeEngine:
    """Mimics latlab.engine.AsyncLLM.generate: two tokens per step after the first."""

    step_s: float = 0.003
    tokenizer: object = None
    model_name: str = "fake"
    seen_ids: list = field(default_factory=list)
    shut: bool = False

    async def generate(self, prompt, params, request_id=None):
        self.seen_ids.append(request_id)
        await asyncio.sleep(self.step_s)
        yield FakeOutput([1], [5, 6, 7])
        left = params.max_tokens - 1
        while left > 0:
            await asyncio.sleep(self.step_s)
            n = min(2, left)
            left -= n
            yield FakeOutput([2] * n, [5, 6, 7], left == 0, "length" if left == 0 else None)

    async def shutdown(self):
        self.shut = True
