"""The load generator: closed loop (N users) or open loop (arrival schedule), one level at a time.

Open loop measures every latency from the *intended* send time, so when the client falls behind
its schedule the delay shows up as latency (and as client queue time) instead of vanishing.
While it runs, the runner watches itself (event-loop lag, send lag, the loop thread's CPU) and
flags a level as ``client_bound`` when the client, not the target, was the bottleneck.
A stop request (Ctrl-C) stops sending, gives in-flight requests ``drain_s`` to finish, cancels
the rest as ``interrupted``, and keeps everything measured so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from latlab.bench.config import RunSettings
from latlab.bench.contract import GenOptions, Progress, Target
from latlab.metrics import SLO, RequestRecord, Stats, Summary, summarize
from latlab.workload import BenchRequest, arrival_offsets_s

# A level is client-bound when any of these is exceeded (see docs/metrics.md "Client self-check").
LOOP_LAG_LIMIT_MS = 10.0
SEND_LAG_LIMIT_MS = 10.0
CPU_LIMIT = 0.9  # share of one core used by the event-loop thread
_LAG_PERIOD_S = 0.02
# Finish (parse) a response at once only when this few requests are in flight; else later.
_FINISH_NOW_MAX_IN_FLIGHT = 4


def _client_error(rec: RequestRecord, exc: Exception) -> None:
    rec.error, rec.error_detail = "client_error", f"{type(exc).__name__}: {exc}"[:200]
    rec.end_ns = rec.end_ns or time.perf_counter_ns()


@dataclass(slots=True)
class ClientCheck:
    """How hard the client itself worked while measuring one level."""

    loop_lag_ms: Stats
    send_lag_ms: Stats
    cpu_s: float
    cpu_util: float  # loop-thread CPU seconds / wall seconds
    cpu_s_per_1k_tokens: float | None
    client_bound: bool
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "loop_lag_ms": self.loop_lag_ms.to_dict(),
            "send_lag_ms": self.send_lag_ms.to_dict(),
            "cpu_s": round(self.cpu_s, 4),
            "cpu_util": round(self.cpu_util, 4),
            "cpu_s_per_1k_tokens": None
            if self.cpu_s_per_1k_tokens is None
            else round(self.cpu_s_per_1k_tokens, 5),
            "client_bound": self.client_bound,
            "reasons": list(self.reasons),
        }


@dataclass(slots=True)
class LevelResult:
    load: dict[str, Any]
    summary: Summary
    records: list[RequestRecord]
    client: ClientCheck
    interrupted: bool = False
    # Through a latlab gateway: one summary per x-latlab-cache outcome, so a hit's latency is
    # never averaged with a miss's.
    by_gateway_cache: dict[str, Summary] = field(default_factory=dict)

    def to_dict(self, with_records: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "load": dict(self.load),
            "summary": self.summary.to_dict(),
            "client": self.client.to_dict(),
            "interrupted": self.interrupted,
        }
        if self.by_gateway_cache:
            out["by_gateway_cache"] = {k: s.to_dict() for k, s in self.by_gateway_cache.items()}
        if with_records:
            out["records"] = [r.to_dict() for r in self.records]
        return out


def gateway_cache_summaries(
    records: Sequence[RequestRecord], slo: SLO | None, window_s: float
) -> dict[str, Summary]:
    """One summary per ``x-latlab-cache`` outcome; empty when no gateway labelled a record."""
    labels = sorted({r.gateway_cache for r in records if r.gateway_cache})
    return {
        label: summarize([r for r in records if r.gateway_cache == label], slo, duration_s=window_s)
        for label in labels
    }


class _Monitor:
    """Samples event-loop lag and the loop thread's CPU time over one level.

    ``load_done()`` closes the load window (lag, CPU share); work after it, such as deferred
    response parsing, still counts in CPU per 1,000 tokens.
    """

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._cpu0 = self._load_cpu = 0.0
        self._wall0 = self._load_wall = 0.0

    async def _sample(self) -> None:
        while True:
            t = time.perf_counter_ns()
            await asyncio.sleep(_LAG_PERIOD_S)
            late = (time.perf_counter_ns() - t) / 1e6 - _LAG_PERIOD_S * 1e3
            self.lags_ms.append(max(0.0, late))

    def start(self) -> None:
        self._cpu0 = time.thread_time()
        self._wall0 = time.perf_counter()
        self._task = asyncio.create_task(self._sample())

    async def load_done(self) -> None:
        self._load_cpu = time.thread_time() - self._cpu0
        self._load_wall = time.perf_counter() - self._wall0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def check(
        self, records: list[RequestRecord], tokens: int, remote: bool, stamps_in_loop: bool
    ) -> ClientCheck:
        total_cpu = time.thread_time() - self._cpu0
        lag = Stats.of(self.lags_ms)
        send = Stats.of(r.queue_ns / 1e6 for r in records if r.queue_ns is not None)
        util = self._load_cpu / self._load_wall if self._load_wall > 0 else 0.0
        reasons = []
        if stamps_in_loop and lag.p90 is not None and lag.p90 > LOOP_LAG_LIMIT_MS:
            reasons.append(f"event-loop lag p90 {lag.p90:.1f} ms > {LOOP_LAG_LIMIT_MS:g} ms")
        if send.p99 is not None and send.p99 > SEND_LAG_LIMIT_MS:
            reasons.append(f"sends p99 {send.p99:.1f} ms behind schedule")
        if remote and util > CPU_LIMIT:
            reasons.append(f"client loop thread used {util:.0%} of a core")
        per_1k = total_cpu / tokens * 1000 if tokens else None
        return ClientCheck(lag, send, total_cpu, util, per_1k, bool(reasons), reasons)


@dataclass(kw_only=True, frozen=True, slots=True)
class Shard:
    """A worker process's part of a level (the parent runs the whole level: the default).

    Its prompts start at ``index_base`` and its request ids carry ``id_prefix``. In open loop
    it sends its share of the parent's schedule: ``open_ids`` at ``open_offsets`` seconds
    after ``open_t0_ns``, a perf_counter_ns instant shared by all processes.
    """

    index_base: int = 0
    id_prefix: str = ""
    open_offsets: list[float] | None = None
    open_ids: list[int] | None = None
    open_t0_ns: int | None = None


@dataclass(slots=True)
class _LevelState:
    """What the runner counts while one level runs; a fresh one for every level."""

    ttfts: list[float] = field(default_factory=list)  # ms, for the live TTFT p50
    unfinished: list[tuple[Any, RequestRecord]] = field(default_factory=list)  # deferred parses
    in_flight: int = 0
    finishers: int = 0
    ok: int = 0
    failed: int = 0
    last_ui: float = 0.0


class Runner:
    """Drives one target through one or more load levels.

    Settings (``RunSettings``, ``Shard``) are fixed for the run; what changes while it runs is
    the level's ``_LevelState``, the stop event and ``drain_s`` (a second Ctrl-C zeroes it).
    """

    def __init__(
        self,
        target: Target,
        requests: Sequence[BenchRequest],
        opts: GenOptions | None,
        *,
        settings: RunSettings | None = None,
        warmup_requests: Sequence[BenchRequest] = (),
        progress: Progress | None = None,
        shard: Shard | None = None,
        level_ids: dict[str, int] | None = None,
    ) -> None:
        self.target = target
        self.requests = requests
        self.opts = opts
        self.settings = settings or RunSettings()
        self.warmup_requests = warmup_requests
        self.progress = progress
        self.shard = shard or Shard()
        self.drain_s = self.settings.drain_s
        self.stop_event = asyncio.Event()
        self._level = _LevelState()
        # How often each load was measured (shared by a worker's runners): see ``_ids``.
        self.level_ids: dict[str, int] = {} if level_ids is None else level_ids

    def request_stop(self) -> None:
        """Stop sending (Ctrl-C); in-flight requests get ``drain_s`` to finish."""
        self.stop_event.set()

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()

    # ---------------------------------------------------------------- one request
    async def _one(self, req: BenchRequest, rec: RequestRecord) -> None:
        salt = self.settings.salt
        if salt is not None:
            req = req.salted(salt.tag(rec.request_id, req.salt_words))
        rec.prompt_tokens_requested, rec.max_tokens = req.prompt_tokens, req.max_tokens
        level = self._level
        level.in_flight += 1
        try:
            finish = await self.target.run(req, rec, self.opts)  # type: ignore[arg-type]
            if finish is not None:
                level.finishers += 1
                # Parsing while other streams are receiving would delay their timestamps, so
                # under load only every 16th response is parsed at once (for the live TTFT).
                if level.in_flight > _FINISH_NOW_MAX_IN_FLIGHT and level.finishers % 16:
                    level.unfinished.append((finish, rec))
                    if not rec.warmup:
                        self._tick(True, None)  # the transport succeeded; parsed later
                    return
                finish()
        except asyncio.CancelledError:
            rec.error, rec.error_detail = "interrupted", "cancelled after Ctrl-C"
            rec.end_ns = rec.end_ns or time.perf_counter_ns()
            raise
        except Exception as exc:  # a target bug must not end the run
            _client_error(rec, exc)
        finally:
            level.in_flight -= 1
        if not rec.warmup:
            self._tick(rec.ok, rec.ttft_ns)

    def _finish_deferred(self) -> None:
        level = self._level
        pending, level.unfinished = level.unfinished, []
        for finish, rec in pending:
            try:
                finish()
            except Exception as exc:
                _client_error(rec, exc)
            if rec.warmup:
                continue
            if rec.ok:
                if rec.ttft_ns is not None:
                    level.ttfts.append(rec.ttft_ns / 1e6)
            else:  # counted as ok when its bytes arrived; parsing found it broken
                level.ok -= 1
                level.failed += 1

    def _tick(self, ok: bool, ttft_ns: int | None) -> None:
        level = self._level
        if ok:
            level.ok += 1
            if ttft_ns is not None:
                level.ttfts.append(ttft_ns / 1e6)
        else:
            level.failed += 1
        now = time.monotonic()
        if self.progress is not None and (now - level.last_ui > 0.2 or level.failed == 1):
            level.last_ui = now
            p50 = Stats.of(level.ttfts).p50 if level.ttfts else None
            self.progress.update(level.ok, level.failed, p50)

    def _request(self, i: int) -> BenchRequest:
        return self.requests[i % len(self.requests)]

    # ---------------------------------------------------------------- load shapes
    async def _closed(
        self, users: int, prefix: str, count: int | None, warmup: bool
    ) -> list[RequestRecord]:
        records: list[RequestRecord] = []
        deadline = None
        if not warmup and self.settings.duration_s is not None:
            deadline = time.perf_counter() + self.settings.duration_s
        next_i = 0
        pool = self.warmup_requests if warmup and self.warmup_requests else self.requests

        async def user() -> None:
            nonlocal next_i
            while not self.stopped:
                if count is not None and next_i >= count:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                i = next_i
                next_i += 1
                j = i if warmup else self.shard.index_base + i
                rec = RequestRecord(request_id=f"{self.shard.id_prefix}{prefix}-{j}", warmup=warmup)
                records.append(rec)
                await self._one(pool[j % len(pool)], rec)

        await self._supervise([asyncio.create_task(user()) for _ in range(users)])
        return records

    async def _open(self, rate: float, prefix: str) -> list[RequestRecord]:
        shard, st = self.shard, self.settings
        if shard.open_offsets is not None:
            offsets = shard.open_offsets
            ids = shard.open_ids or list(range(len(offsets)))
        else:
            offsets = arrival_offsets_s(rate, num_requests=st.num_requests,
                                        duration_s=st.duration_s, burstiness=st.burstiness,
                                        seed=st.seed)  # fmt: skip
            ids = list(range(len(offsets)))
        records: list[RequestRecord] = []
        tasks: list[asyncio.Task[None]] = []
        # a small lead so the first send is on time
        t0 = shard.open_t0_ns or time.perf_counter_ns() + 5_000_000

        async def dispatch() -> None:
            for i, off in zip(ids, offsets, strict=True):
                if self.stopped:
                    return
                intended = t0 + int(off * 1e9)
                # loop: event-loop timers (uvloop's are whole ms) may wake a little early
                while (delay := intended - time.perf_counter_ns()) > 0:
                    await asyncio.sleep(delay / 1e9)
                if self.stopped:
                    return
                rec = RequestRecord(request_id=f"{shard.id_prefix}{prefix}-{i}",
                                    intended_send_ns=intended)  # fmt: skip
                records.append(rec)
                tasks.append(asyncio.create_task(self._one(self._request(i), rec)))

        await self._supervise([asyncio.create_task(dispatch())], tasks)
        return records

    async def _supervise(
        self, producers: list[asyncio.Task[None]], spawned: list[asyncio.Task[None]] | None = None
    ) -> None:
        """Wait for the load to finish; on stop, give in-flight requests ``drain_s``, then cancel.

        ``producers`` are the closed-loop users or the open-loop dispatcher; ``spawned`` the
        requests the dispatcher started.
        """
        stop_wait = asyncio.create_task(self.stop_event.wait())
        try:
            pending = set(producers)
            while pending and not self.stopped:
                _, pending = await asyncio.wait(
                    pending | {stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(stop_wait)
            left = [t for t in spawned or () if not t.done()]
            if left and not self.stopped:
                everyone = asyncio.gather(*left, return_exceptions=True)
                await asyncio.wait({everyone, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            left = [t for t in (*producers, *(spawned or ())) if not t.done()]
            if left:
                _, still = await asyncio.wait(left, timeout=self.drain_s)
                for t in still:
                    t.cancel()
                await asyncio.gather(*still, return_exceptions=True)
        finally:
            stop_wait.cancel()

    # ---------------------------------------------------------------- levels
    def _ids(self, base: str) -> str:
        """Request-id prefix of a level: ``c4``, then ``c4.1``, ``c4.2`` when the same load is
        measured again (--repeats, a capacity probe re-measured), so every request carries its
        own salt tag and no prefix cache serves a repeat its earlier prompts."""
        n = self.level_ids.get(base, 0)
        self.level_ids[base] = n + 1
        return base if n == 0 else f"{base}.{n}"

    async def warmup(self, count: int, users: int) -> int:
        if count <= 0:
            return 0
        recs = await self._closed(max(1, min(users, count)), "warmup", count, warmup=True)
        self._finish_deferred()
        return len(recs)

    async def run_level(self, load: dict[str, Any]) -> LevelResult:
        self._level = _LevelState()
        label = ", ".join(f"{k} {v:g}" for k, v in load.items())
        if self.progress is not None:
            self.progress.start_level(label, self.settings.num_requests)
        if "concurrency" in load:
            await self.target.prepare(int(load["concurrency"]))
        # Objects alive now (imports, prompts, a model) need no more GC passes: freezing them
        # keeps full collections, which would stall every stream at once, short.
        gc.collect()
        gc.freeze()
        monitor = _Monitor()
        monitor.start()
        t_start = time.perf_counter_ns()
        if "rate" in load:
            records = await self._open(float(load["rate"]), self._ids(f"r{load['rate']}"))
        else:
            c = int(load["concurrency"])
            records = await self._closed(
                c, self._ids(f"c{c}"), self.settings.num_requests, warmup=False
            )
        await monitor.load_done()
        gc.unfreeze()
        self._finish_deferred()
        ends = [r.end_ns for r in records if r.end_ns is not None]
        start = min((r.origin_ns for r in records), default=t_start)
        window_s = (max(ends) - start) / 1e9 if ends else 0.0
        summary = summarize(records, self.settings.slo, duration_s=window_s)
        # A target that timestamps in its own threads (transformers) is not delayed by lag.
        client = monitor.check(
            records, summary.output_tokens, self.target.remote, self.target.stamps_in_loop
        )
        if self.progress is not None:
            self.progress.update(self._level.ok, self._level.failed, summary.ttft_ms.p50)
            self.progress.end_level()
        by_gateway = gateway_cache_summaries(records, self.settings.slo, window_s)
        return LevelResult(dict(load), summary, records, client, self.stopped, by_gateway)
