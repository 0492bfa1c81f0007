"""Serve the lab's requests with one ``Setup`` and time every token.

This is the lab's in-module timing loop. It records one ``latlab.metrics.RequestRecord`` per
request (send time, arrival time and size of every chunk), so the figures come from the same
``summarize`` as ``latlab bench``. It exists beside ``latlab.bench`` because the lab needs what
a bench target does not give back: the generated token ids (for the greedy-output check) and
request-level recipes (response cache, prompt trimming, prefix grouping) that sit between the
client and the model.

- transformers backend: requests one after another (batch 1), through the greedy or the
  prompt-lookup loop of ``generation``.
- engine backend: the latlab ``AsyncLLM`` with ``concurrency`` requests in flight; static
  batching sends fixed waves and waits for each wave's slowest request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from latlab.metrics import RequestRecord
from latlab.optimize.generation import SpeculationStats, greedy_chunks, prompt_lookup_chunks
from latlab.optimize.subject import Setup, activated
from latlab.optimize.workload import LabRequest, LabWorkload


@dataclass(slots=True)
class RunResult:
    """One pass over the workload: records (for timing) and outputs (for quality)."""

    records: list[RequestRecord]
    outputs: dict[str, list[int]]  # request_id -> generated token ids
    extra: dict[str, Any] = field(default_factory=dict)


def prepare(setup: Setup, requests: list[LabRequest]) -> list[tuple[LabRequest, list[int]]]:
    """Request-level recipes that change what is sent: order (grouping) and prompt trimming."""
    ordered = sorted(requests, key=lambda r: r.prefix_id) if setup.group_by_prefix else requests
    budget = setup.prompt_token_budget
    return [(r, list(r.prompt_ids[-budget:] if budget else r.prompt_ids)) for r in ordered]


def _record_stream(rec: RequestRecord, chunks: Iterator[list[int]], out: list[int]) -> None:
    for chunk in chunks:
        rec.chunk_ns.append(time.perf_counter_ns())
        rec.chunk_tokens.append(len(chunk))
        out.extend(chunk)


class TransformersRunner:
    """Batch-1 requests through the setup's decoding loop (fixed output length)."""

    def __init__(self, setup: Setup, workload: LabWorkload) -> None:
        self.setup = setup
        self.workload = workload

    def _chunks(self, prompt: list[int], stats: SpeculationStats) -> Iterator[list[int]]:
        n = self.workload.output_len
        if self.setup.decode == "prompt_lookup":
            config = self.setup.prompt_lookup
            return prompt_lookup_chunks(self.setup.model, prompt, n, (), config, stats)
        return greedy_chunks(self.setup.model, prompt, n, ())

    def run(self, requests: list[LabRequest]) -> RunResult:
        cache: dict[tuple[int, ...], list[int]] = {}
        records, outputs = [], {}
        hits = 0
        stats = SpeculationStats()
        with activated(self.setup):
            for req, prompt in prepare(self.setup, requests):
                rec = RequestRecord(
                    request_id=req.request_id,
                    send_ns=time.perf_counter_ns(),
                    prompt_tokens=len(prompt),
                    output_tokens_source="engine",
                )
                out: list[int] = []
                key = tuple(prompt)
                if self.setup.response_cache and key in cache:
                    hits += 1
                    _record_stream(rec, iter([cache[key]]), out)
                else:
                    _record_stream(rec, self._chunks(prompt, stats), out)
                    cache[key] = list(out)
                rec.end_ns = time.perf_counter_ns()
                rec.output_tokens = len(out)
                records.append(rec)
                outputs[req.request_id] = out
        extra: dict[str, Any] = {}
        if self.setup.response_cache:
            extra["response_cache_hits"] = hits
        if self.setup.decode == "prompt_lookup":  # explains a speedup, or its absence
            extra.update(
                forward_passes=stats.forward_passes,
                drafted_tokens=stats.drafted_tokens,
                accepted_tokens=stats.accepted_tokens,
            )
        return RunResult(records, outputs, extra)

    def close(self) -> None:
        pass


def default_engine_factory(setup: Setup) -> Any:
    """The latlab AsyncLLM for this setup (engine options on top of the lab's model)."""
    from latlab.engine.async_engine import AsyncLLM
    from latlab.engine.config import EngineConfig

    options = {"model": setup.model_path, **setup.engine_options}
    if setup.num_threads is not None:
        options.setdefault("num_threads", setup.num_threads)
    return AsyncLLM(EngineConfig(**options))


def _sampling_params(max_tokens: int) -> Any:
    from latlab.engine.sampling_params import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


class EngineRunner:
    """``concurrency`` requests in flight on one AsyncLLM, kept across repetitions."""

    def __init__(
        self,
        setup: Setup,
        workload: LabWorkload,
        engine_factory: Callable[[Setup], Any] = default_engine_factory,
        params_factory: Callable[[int], Any] = _sampling_params,
    ) -> None:
        self.setup = setup
        self.workload = workload
        self.loop = asyncio.new_event_loop()
        self.params = params_factory(workload.output_len)

        async def build() -> Any:
            return engine_factory(setup)

        self.engine = self.loop.run_until_complete(build())

    async def _one(
        self,
        req: LabRequest,
        prompt: list[int],
        first_token: asyncio.Event | None = None,
        held_ns: int = 0,
    ) -> tuple[RequestRecord, list[int]]:
        rec = RequestRecord(
            request_id=req.request_id,
            send_ns=time.perf_counter_ns(),
            prompt_tokens=len(prompt),
            output_tokens_source="engine",
        )
        if held_ns:  # time the client held it back counts as latency (no coordinated omission)
            rec.intended_send_ns = rec.send_ns - held_ns
        out: list[int] = []
        try:
            async for item in self.engine.generate(prompt, self.params, request_id=None):
                if item.new_token_ids:
                    if first_token is not None:
                        first_token.set()
                    rec.chunk_ns.append(time.perf_counter_ns())
                    rec.chunk_tokens.append(len(item.new_token_ids))
                    out.extend(item.new_token_ids)
        except Exception as exc:  # recorded per request, like the bench runner does
            rec.error = type(exc).__name__
            rec.error_detail = str(exc)[:200]
        if first_token is not None:
            first_token.set()  # never leave followers waiting on a failed leader
        rec.end_ns = time.perf_counter_ns()
        rec.output_tokens = len(out)
        return rec, out

    async def _run(self, items: list[tuple[LabRequest, list[int]]]) -> list[tuple[Any, Any]]:
        width = self.workload.concurrency
        if self.setup.static_batching:
            results = []
            for start in range(0, len(items), width):
                wave = items[start : start + width]
                results += await asyncio.gather(*(self._one(r, p) for r, p in wave))
            return results
        gate = asyncio.Semaphore(width)
        if self.setup.group_by_prefix:
            return await self._run_grouped(items, gate)

        async def limited(req: LabRequest, prompt: list[int]) -> tuple[Any, Any]:
            async with gate:
                return await self._one(req, prompt)

        return await asyncio.gather(*(limited(r, p) for r, p in items))

    async def _run_grouped(
        self, items: list[tuple[LabRequest, list[int]]], gate: asyncio.Semaphore
    ) -> list[tuple[Any, Any]]:
        """Each prefix group's first request goes alone; the rest follow its first token.

        Sent together, a group's requests would all be in prefill before any of them has
        cached the shared prefix, and nobody would hit the cache.
        """
        leaders: dict[int, asyncio.Event] = {}

        async def send(req: LabRequest, prompt: list[int]) -> tuple[Any, Any]:
            event = leaders.get(req.prefix_id)
            if event is None:
                event = leaders[req.prefix_id] = asyncio.Event()
                async with gate:
                    return await self._one(req, prompt, first_token=event)
            start = time.perf_counter_ns()
            await event.wait()
            held = time.perf_counter_ns() - start
            async with gate:
                return await self._one(req, prompt, held_ns=held)

        return await asyncio.gather(*(send(r, p) for r, p in items))

    def run(self, requests: list[LabRequest]) -> RunResult:
        items = prepare(self.setup, requests)
        with activated(self.setup):
            results = self.loop.run_until_complete(self._run(items))
        records = [rec for rec, _ in results]
        outputs = {rec.request_id: out for rec, out in results}
        extra: dict[str, Any] = {}
        stats = getattr(self.engine, "stats", None)
        if stats is not None:
            s = stats()
            extra = {
                k: getattr(s, k)
                for k in (
                    "prefix_cache_queries",
                    "prefix_cache_hits",
                    "num_kv_blocks",
                    "spec_draft_tokens_total",
                    "spec_accepted_tokens_total",
                )
                if hasattr(s, k)
            }
        return RunResult(records, outputs, extra)

    def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            self.loop.run_until_complete(shutdown())
        self.loop.close()


def make_runner(setup: Setup, workload: LabWorkload, **kwargs: Any) -> Any:
    if setup.backend == "engine":
        return EngineRunner(setup, workload, **kwargs)
    return TransformersRunner(setup, workload)
