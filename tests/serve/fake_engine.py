"""A small engine that keeps the AsyncLLM contract (see docs/engine.md) and returns its records.

Characters are tokens (id = code point), the output is a fixed alphabet cycled, and KV
accounting is exact (one block per ``block_size`` tokens), so tests can compute every
expected value by hand. ``gate`` (a threading.Event, as the server runs in another
thread) holds generation until the test sets it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from latlab.engine.outputs import EngineStats, RequestOutput
from latlab.engine.sequence import RequestMetrics
from latlab.errors import CapacityError, ConfigError, OverloadedError

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
MODEL = "fake-model"  # the served name the app tests use


class FakeTokenizer:
    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def __len__(self) -> int:
        return 1000

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        if any(m["role"] == "tool" for m in messages):
            raise ValueError("this template has no tool role")
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


@dataclass
class FakeParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    logit_bias: dict[str, float] | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.min_tokens > self.max_tokens:
            raise ConfigError("min_tokens must be <= max_tokens")


@dataclass
class FakeEngine:
    max_model_len: int = 256
    num_kv_blocks: int = 64
    block_size: int = 4
    max_running: int = 4
    max_waiting: int = 8
    token_delay_s: float = 0.0
    model_name: str = "fake/model"
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    used_blocks: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    aborted: list[str] = field(default_factory=list)
    gate: threading.Event | None = None
    _slots: asyncio.Semaphore | None = None

    def stats(self) -> EngineStats:
        used = sum(self.used_blocks.values())
        return EngineStats(
            num_running=len(self.used_blocks),
            num_waiting=self.waiting,
            kv_cache_usage=used / self.num_kv_blocks,
            num_kv_blocks=self.num_kv_blocks,
            num_free_blocks=self.num_kv_blocks - used,
            prefix_cache_queries=self.prompt_tokens_total,
            prefix_cache_hits=0,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
        )

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    async def generate(self, prompt, params, request_id=None):
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not isinstance(params, FakeParams):
            raise ConfigError("params must be FakeParams")
        if self._blocks(len(ids) + params.max_tokens) > self.num_kv_blocks:
            raise CapacityError("request needs more KV blocks than the whole cache")
        if self.waiting >= self.max_waiting:
            raise OverloadedError("waiting queue is full")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_running)
        metrics = RequestMetrics(arrival_ns=time.perf_counter_ns())
        rid = request_id or f"req-{id(ids)}"
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            metrics.first_scheduled_ns = time.perf_counter_ns()
            self.prompt_tokens_total += len(ids)
            self.used_blocks[rid] = self._blocks(len(ids))
            out_ids: list[int] = []
            while True:
                while self.gate is not None and not self.gate.is_set():
                    await asyncio.sleep(0.005)
                await asyncio.sleep(self.token_delay_s)
                token = ord(ALPHABET[len(out_ids) % len(ALPHABET)])
                out_ids.append(token)
                self.generation_tokens_total += 1
                self.used_blocks[rid] = self._blocks(len(ids) + len(out_ids))
                now = time.perf_counter_ns()
                metrics.first_token_ns = metrics.first_token_ns or now
                text = self.tokenizer.decode(out_ids)
                stop = params.stop if isinstance(params.stop, str) else None
                hit_stop = stop is not None and text.endswith(stop)
                finished = hit_stop or len(out_ids) >= params.max_tokens
                if finished:
                    metrics.finished_ns = now
                reason = ("stop" if hit_stop else "length") if finished else None
                yield RequestOutput(
                    rid,
                    None,
                    ids,
                    text[: len(text) - len(stop)] if hit_stop else text,
                    list(out_ids),
                    "" if hit_stop else chr(token),
                    [token],
                    finished,
                    reason,
                    0,
                    metrics,
                )
                if finished:
                    return
        finally:
            if rid in self.used_blocks:
                del self.used_blocks[rid]
            if not metrics.finished_ns:
                self.aborted.append(rid)
            self._slots.release()

    async def shutdown(self) -> None:
        return None
