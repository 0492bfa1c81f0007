"""Serve the lab's requests with one ``Setup``, timed by ``latlab.bench``'s load generator.

Each pass is one closed-loop level of the bench ``Runner`` (``concurrency`` users; 1 for the
transformers backend), so the lab's TTFT, ITL and throughput come from the same driver, records
and ``summarize`` as ``latlab bench``. What the lab adds sits inside its target, between client
and model: it keeps the generated token ids (for the greedy-output check) and applies the
request-level recipes (response cache, prompt trimming, prefix grouping, static waves).

- transformers backend: one request at a time (batch 1) through the greedy or prompt-lookup
  loop of ``generation``, run on the loop's thread (nothing else is in flight) so each chunk is
  timestamped the moment it is produced.
- engine backend: the latlab ``AsyncLLM``; static batching holds each wave until the previous
  wave's slowest request is done, and that wait counts as the request's latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from latlab.bench.contract import BaseTarget, GenOptions
from latlab.bench.runner import Runner, RunSettings
from latlab.gateway.cachekey import cache_key
from latlab.gateway.grouping import group_by_prefix, prefix_key
from latlab.gateway.trim import trim_token_ids
from latlab.metrics import RequestRecord, Summary
from latlab.optimize.generation import SpeculationStats, greedy_chunks, prompt_lookup_chunks
from latlab.optimize.lab_workload import LabRequest, LabWorkload
from latlab.optimize.subject import Setup, activated
from latlab.workload import BenchRequest


@dataclass(slots=True)
class RunResult:
    """One pass over the workload: records and summary (timing) and outputs (quality)."""

    records: list[RequestRecord]
    outputs: dict[str, list[int]]  # request_id -> generated token ids
    extra: dict[str, Any] = field(default_factory=dict)
    summary: Summary | None = None


def prepare(
    setup: Setup, requests: list[LabRequest], prefix_len: int
) -> list[tuple[LabRequest, list[int]]]:
    """Request-level recipes that change what is sent: order (grouping) and prompt trimming.

    Both are latlab gateway's own functions, so the lab measures what the gateway does:
    requests grouped by the key of their leading ``prefix_len`` tokens, prompts cut to their
    last ``budget`` tokens.
    """
    ordered = requests
    if setup.group_by_prefix:
        groups = group_by_prefix(requests, lambda r: r.prompt_ids, block=prefix_len)
        ordered = [r for group in groups for r in group]
    budget = setup.prompt_token_budget
    return [(r, trim_token_ids(list(r.prompt_ids), budget) if budget else list(r.prompt_ids))
            for r in ordered]  # fmt: skip


def _record_stream(rec: RequestRecord, chunks: Iterator[list[int]], out: list[int]) -> None:
    for chunk in chunks:
        rec.chunk_ns.append(time.perf_counter_ns())
        rec.chunk_tokens.append(len(chunk))
        out.extend(chunk)


class _LabTarget(BaseTarget):
    """A bench target over one setup: the response cache and output capture live here.

    ``generate(lab_request, prompt, rec, out)`` is the backend's part: it fills the chunk
    timestamps and ``out`` (and moves ``rec.send_ns`` when it held the request back first).
    ``finished(lab_request)`` runs for every request, cache hit or error included, so nothing
    waiting on it (a wave, a prefix group) waits forever.
    """

    def __init__(
        self,
        setup: Setup,
        generate: Callable[..., Any],
        finished: Callable[[LabRequest], None] | None = None,
    ) -> None:
        self.setup = setup
        self.generate = generate
        self.finished = finished
        self.items: dict[str, tuple[LabRequest, list[int]]] = {}
        self.outputs: dict[str, list[int]] = {}
        self.cache: dict[str, list[int]] = {}
        self.cache_hits = 0
        self.max_tokens = 0

    async def run(self, req: BenchRequest, rec: RequestRecord, opts: GenOptions | None) -> None:
        lab_request, prompt = self.items[req.request_id]
        rec.prompt_tokens = len(prompt)
        rec.output_tokens_source = "engine"
        rec.send_ns = time.perf_counter_ns()
        out: list[int] = []
        # The gateway's cache key over what the request would send: greedy, fixed length.
        body = {"prompt": prompt, "max_tokens": self.max_tokens, "temperature": 0}
        key = cache_key("/completions", body)
        try:
            if self.setup.response_cache and key in self.cache:
                self.cache_hits += 1
                _record_stream(rec, iter([self.cache[key]]), out)
            else:
                await self.generate(lab_request, prompt, rec, out)
                self.cache[key] = list(out)
        except Exception as exc:  # recorded per request, like the bench targets do
            rec.error = type(exc).__name__
            rec.error_detail = str(exc)[:200]
        finally:
            if self.finished is not None:
                self.finished(lab_request)
        rec.end_ns = time.perf_counter_ns()
        rec.output_tokens = len(out)
        self.outputs[lab_request.request_id] = out


def run_pass(
    loop: asyncio.AbstractEventLoop,
    target: _LabTarget,
    items: list[tuple[LabRequest, list[int]]],
    concurrency: int,
    max_tokens: int,
) -> RunResult:
    """One closed-loop bench level over ``items``, in order, ``concurrency`` users."""
    target.items = {r.request_id: (r, p) for r, p in items}
    target.max_tokens = max_tokens
    target.outputs, target.cache, target.cache_hits = {}, {}, 0  # the cache lives one pass
    requests = [BenchRequest(p, max_tokens, len(p), r.request_id) for r, p in items]
    runner = Runner(target, requests, None, settings=RunSettings(num_requests=len(requests)))
    level = loop.run_until_complete(runner.run_level({"concurrency": concurrency}))
    result = RunResult(level.records, dict(target.outputs), summary=level.summary)
    if target.setup.response_cache:
        result.extra["response_cache_hits"] = target.cache_hits
    return result


class TransformersRunner:
    """Batch-1 requests through the setup's decoding loop (fixed output length)."""

    def __init__(self, setup: Setup, workload: LabWorkload) -> None:
        self.setup = setup
        self.workload = workload
        self.loop = asyncio.new_event_loop()
        self.stats = SpeculationStats()
        self.target = _LabTarget(setup, self._generate)

    def _chunks(self, prompt: list[int]) -> Iterator[list[int]]:
        n = self.workload.output_len
        if self.setup.decode == "prompt_lookup":
            config = self.setup.prompt_lookup
            return prompt_lookup_chunks(self.setup.model, prompt, n, (), config, self.stats)
        return greedy_chunks(self.setup.model, prompt, n, ())

    async def _generate(
        self, _: LabRequest, prompt: list[int], rec: RequestRecord, out: list[int]
    ) -> None:
        _record_stream(rec, self._chunks(prompt), out)

    def run(self, requests: list[LabRequest]) -> RunResult:
        self.stats = SpeculationStats()
        with activated(self.setup):
            result = run_pass(
                self.loop,
                self.target,
                prepare(self.setup, requests, self.workload.shared_prefix_len),
                1,
                self.workload.output_len,
            )
        if self.setup.decode == "prompt_lookup":  # explains a speedup, or its absence
            result.extra.update(
                forward_passes=self.stats.forward_passes,
                drafted_tokens=self.stats.drafted_tokens,
                accepted_tokens=self.stats.accepted_tokens,
            )
        return result

    def close(self) -> None:
        self.loop.close()


def default_engine_factory(setup: Setup) -> Any:
    """The latlab AsyncLLM for this setup (engine options on top of the lab's model)."""
    from latlab.engine.async_engine import AsyncLLM
    from latlab.engine.config import EngineConfig

    options = {"model": setup.model_path, **setup.engine_options}
    if setup.num_threads is not None:
        options.setdefault("num_threads", setup.num_threads)
    return AsyncLLM(EngineConfig.from_options(**options))


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
        self.target = _LabTarget(setup, self._generate, self._finished)
        self._leaders: dict[str | None, asyncio.Event] = {}
        self._waves: list[asyncio.Event] = []
        self._wave_left: list[int] = []
        self._index: dict[str, int] = {}
        self._group: dict[str, str | None] = {}  # request -> the gateway's prefix key

        async def build() -> Any:
            return engine_factory(setup)

        self.engine = self.loop.run_until_complete(build())

    async def _generate(
        self, req: LabRequest, prompt: list[int], rec: RequestRecord, out: list[int]
    ) -> None:
        wave = self._index[req.request_id] // self.workload.concurrency
        if self.setup.static_batching and wave:
            await self._waves[wave - 1].wait()
        is_leader = await self._hold_for_leader(req, rec)
        async for item in self.engine.generate(prompt, self.params, request_id=None):
            if item.new_token_ids:
                if is_leader:
                    self._leaders[self._group[req.request_id]].set()
                rec.chunk_ns.append(time.perf_counter_ns())
                rec.chunk_tokens.append(len(item.new_token_ids))
                out.extend(item.new_token_ids)

    async def _hold_for_leader(self, req: LabRequest, rec: RequestRecord) -> bool:
        """Grouping: a prefix's first request goes alone, the rest follow its first token.

        Sent together, a group's requests would all be in prefill before any of them has
        cached the shared prefix, and nobody would hit the cache. A follower's hold counts
        as latency (from its intended send time). True for the leader.
        """
        group = self._group.get(req.request_id)
        if not self.setup.group_by_prefix or group is None:
            return False
        event = self._leaders.get(group)
        if event is None:
            self._leaders[group] = asyncio.Event()
            return True
        rec.intended_send_ns = rec.send_ns
        await event.wait()
        rec.send_ns = time.perf_counter_ns()
        return False

    def _finished(self, req: LabRequest) -> None:
        """Whatever happened to a request (tokens, cache hit, error), release who waits on it."""
        leader = self._leaders.get(self._group.get(req.request_id))
        if leader is not None:
            leader.set()  # never leave followers waiting on a failed leader
        wave = self._index[req.request_id] // self.workload.concurrency
        self._wave_left[wave] -= 1
        if not self._wave_left[wave]:
            self._waves[wave].set()

    def run(self, requests: list[LabRequest]) -> RunResult:
        items = prepare(self.setup, requests, self.workload.shared_prefix_len)
        width = self.workload.concurrency
        self._index = {r.request_id: i for i, (r, _) in enumerate(items)}
        block = self.workload.shared_prefix_len
        self._group = {r.request_id: prefix_key(r.prompt_ids, block=block) for r, _ in items}
        self._leaders = {}
        num_waves = -(-len(items) // width)
        self._waves = [asyncio.Event() for _ in range(num_waves)]
        self._wave_left = [min(width, len(items) - w * width) for w in range(num_waves)]
        with activated(self.setup):
            result = run_pass(self.loop, self.target, items, width, self.workload.output_len)
        stats = getattr(self.engine, "stats", None)
        if stats is not None:
            s = stats()
            keys = (
                "prefix_cache_queries",
                "prefix_cache_hits",
                "num_kv_blocks",
                "spec_draft_tokens_total",
                "spec_accepted_tokens_total",
            )
            result.extra.update({k: getattr(s, k) for k in keys if hasattr(s, k)})
        return result

    def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            self.loop.run_until_complete(shutdown())
        self.loop.close()


def make_runner(setup: Setup, workload: LabWorkload, **kwargs: Any) -> Any:
    if setup.backend == "engine":
        return EngineRunner(setup, workload, **kwargs)
    return TransformersRunner(setup, workload)
