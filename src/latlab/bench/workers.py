"""Several client processes for one level, when one event loop cannot keep up.

Each worker is a spawned process with its own event loop and its own connection pool, running a
shard of the level: closed loop splits the users (and the request budget), open loop deals the
parent's arrival schedule round-robin with one shared start instant. ``perf_counter_ns`` reads
``CLOCK_MONOTONIC`` on Linux, which all processes share, so every timestamp is on one clock and
the parent summarizes the merged records as if one client had taken them.

Only HTTP targets can be sharded (an in-process model lives in one process). Workers ignore
SIGINT and SIGTERM; the parent's handler tells them to stop, and they drain like a single
runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from latlab.bench.contract import GenOptions, TargetSpec
from latlab.bench.loop import run_on_loop
from latlab.bench.runner import (
    ClientCheck,
    LevelResult,
    Runner,
    RunSettings,
    Shard,
    gateway_cache_summaries,
)
from latlab.errors import ConfigError
from latlab.metrics import SLO, RequestRecord, Stats, summarize
from latlab.workload import BenchRequest, arrival_offsets_s

_OPEN_LEAD_NS = 100_000_000  # time for the schedule to reach every worker before it starts


@dataclass(kw_only=True, frozen=True, slots=True)
class WorkerSettings:
    """What every worker process gets once, at start: its target, prompts and run settings."""

    target: TargetSpec
    opts: GenOptions | None
    requests: Sequence[BenchRequest]
    run: RunSettings
    loop: str = "auto"


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers, larger first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _worker_main(conn: tuple[Any, Any], wid: int, settings: WorkerSettings) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the parent decides when to stop
    target = settings.target.build()
    run_on_loop(lambda: _serve(conn, wid, settings, target), settings.loop)


class _PipeProgress:
    """A worker's progress sink: the runner's (throttled) updates go to the parent."""

    def __init__(self, out: Any, wid: int) -> None:
        self.out = out
        self.wid = wid

    def start_level(self, label: str, total: int | None) -> None:
        pass

    def update(self, completed: int, failed: int, ttft_p50_ms: float | None) -> None:
        self.out.send(("progress", self.wid, completed, failed, ttft_p50_ms))

    def end_level(self) -> None:
        pass


async def _serve(conns: tuple[Any, Any], wid: int, st: WorkerSettings, target: Any) -> None:
    # Two one-way pipes: the event loop watches the command pipe (and makes it non-blocking),
    # results go out on the other one with plain blocking writes.
    conn, out = conns
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    current: list[Runner] = []

    def readable() -> None:
        try:
            msg = conn.recv()
        except EOFError:
            msg = ("quit",)
        if msg[0] == "stop":
            for r in current:
                r.request_stop()
        else:
            inbox.put_nowait(msg)

    loop.add_reader(conn.fileno(), readable)
    out.send(("ready", wid))
    level_ids: dict[str, int] = {}  # a load measured again gets new request ids (its salts)
    try:
        while True:
            msg = await inbox.get()
            if msg[0] == "quit":
                return
            _, load, num_requests, shard = msg
            settings = dataclasses.replace(st.run, num_requests=num_requests)
            progress = _PipeProgress(out, wid)
            runner = Runner(target, st.requests, st.opts, settings=settings, progress=progress,
                            shard=shard, level_ids=level_ids)  # fmt: skip
            current[:] = [runner]
            result = await runner.run_level(load)
            current.clear()
            out.send(("result", wid, result))
    finally:
        loop.remove_reader(conn.fileno())
        await target.aclose()


class WorkerPool:
    """``n`` client processes that run the shards of each level."""

    def __init__(self, n: int, settings: WorkerSettings) -> None:
        if n < 2:
            raise ConfigError("a worker pool needs --workers >= 2")
        self.n = n
        self.settings = settings
        ctx = mp.get_context("spawn")  # never fork a process with threads and an event loop
        self._conns: list[Any] = []  # commands to each worker
        self._results: list[Any] = []  # results from each worker
        self._procs: list[Any] = []
        for wid in range(n):
            cmd_r, cmd_w = ctx.Pipe(duplex=False)
            res_r, res_w = ctx.Pipe(duplex=False)
            args = ((cmd_r, res_w), wid, settings)
            proc = ctx.Process(target=_worker_main, args=args, daemon=True)
            proc.start()
            cmd_r.close()
            res_w.close()
            self._conns.append(cmd_w)
            self._results.append(res_r)
            self._procs.append(proc)

    async def _recv_all(self, conns: list[Any]) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(None, c.recv) for c in conns)))

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._recv_all(self._results), 60)
        except (asyncio.TimeoutError, EOFError):
            self.close()
            raise ConfigError("client worker processes did not start (see stderr)") from None

    def stop(self) -> None:
        for c in self._conns:
            try:
                c.send(("stop",))
            except (OSError, ValueError):
                continue

    async def run_level(
        self,
        load: dict[str, Any],
        num_requests: int | None,
        on_progress: Callable[[int, int, float | None], None] | None = None,
    ) -> LevelResult:
        """Run one level's shards; ``on_progress`` sees the workers' counts as they come in."""
        shards = self._shards(load, num_requests)
        for w, msg in shards:
            self._conns[w].send(msg)
        loop = asyncio.get_running_loop()
        latest: dict[int, tuple[int, int, float | None]] = {}

        def report(wid: int, completed: int, failed: int, ttft_p50: float | None) -> None:
            latest[wid] = (completed, failed, ttft_p50)
            if on_progress is not None:
                on_progress(*_combined_progress(latest.values()))

        def receive(conn: Any) -> tuple[Any, ...]:
            while True:
                msg = conn.recv()
                if msg[0] != "progress":
                    return msg
                loop.call_soon_threadsafe(report, *msg[1:])

        replies = await asyncio.gather(
            *(loop.run_in_executor(None, receive, self._results[w]) for w, _ in shards)
        )
        return merge(load, [r[2] for r in replies], self.settings.run.slo)

    def _shards(self, load: dict[str, Any], n: int | None) -> list[tuple[int, tuple[Any, ...]]]:
        """(worker, message) per worker with work: its load, request budget and Shard."""
        if "concurrency" in load:
            users = split(int(load["concurrency"]), min(self.n, int(load["concurrency"])))
            counts = [None] * len(users) if n is None else _proportional(n, users)
            out, base = [], 0
            for w, (u, k) in enumerate(zip(users, counts, strict=True)):
                shard = Shard(index_base=base, id_prefix=f"w{w}-")
                out.append((w, ("level", {"concurrency": u}, k, shard)))
                base += k or 0
            return out
        run = self.settings.run
        offsets = arrival_offsets_s(float(load["rate"]), num_requests=n,
                                    duration_s=run.duration_s, burstiness=run.burstiness,
                                    seed=run.seed)  # fmt: skip
        t0 = time.perf_counter_ns() + _OPEN_LEAD_NS
        ids = list(range(len(offsets)))
        out = []
        for w in range(self.n):
            mine = ids[w :: self.n]
            if mine:
                shard = Shard(id_prefix=f"w{w}-", open_offsets=offsets[w :: self.n],
                              open_ids=mine, open_t0_ns=t0)  # fmt: skip
                out.append((w, ("level", dict(load), len(mine), shard)))
        return out

    def close(self) -> None:
        for c in self._conns:
            with contextlib.suppress(OSError, ValueError):
                c.send(("quit",))
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.terminate()


def _combined_progress(
    parts: Iterable[tuple[int, int, float | None]],
) -> tuple[int, int, float | None]:
    """Completed and failed summed; TTFT p50 as the completed-weighted mean of the workers'.

    A display figure while the level runs: the level's exact p50 comes from all records.
    """
    parts = list(parts)
    completed = sum(p[0] for p in parts)
    failed = sum(p[1] for p in parts)
    weighted = [(p[2], p[0]) for p in parts if p[2] is not None and p[0] > 0]
    total = sum(w for _, w in weighted)
    p50 = sum(v * w for v, w in weighted) / total if total else None
    return completed, failed, p50


def _proportional(n: int, users: list[int]) -> list[int]:
    total = sum(users)
    counts = [n * u // total for u in users]
    for i in range(n - sum(counts)):
        counts[i % len(counts)] += 1
    return counts


def merge(load: dict[str, Any], parts: list[LevelResult], slo: SLO | None) -> LevelResult:
    """One level's result from its shards: records pooled, summary recomputed over them."""
    records: list[RequestRecord] = [r for p in parts for r in p.records]
    ends = [r.end_ns for r in records if r.end_ns is not None]
    start = min((r.origin_ns for r in records), default=0)
    window_s = (max(ends) - start) / 1e9 if ends else 0.0
    summary = summarize(records, slo, duration_s=window_s)
    worst = max(parts, key=lambda p: p.client.loop_lag_ms.p90 or 0.0)
    cpu = sum(p.client.cpu_s for p in parts)
    reasons = [f"worker {i}: {why}" for i, p in enumerate(parts) for why in p.client.reasons]
    client = ClientCheck(
        loop_lag_ms=worst.client.loop_lag_ms,
        send_lag_ms=Stats.of(r.queue_ns / 1e6 for r in records if r.queue_ns is not None),
        cpu_s=cpu,
        cpu_util=max(p.client.cpu_util for p in parts),
        cpu_s_per_1k_tokens=cpu / summary.output_tokens * 1000 if summary.output_tokens else None,
        client_bound=any(p.client.client_bound for p in parts),
        reasons=reasons,
    )
    by_gateway = gateway_cache_summaries(records, slo, window_s)
    return LevelResult(dict(load), summary, records, client,
                       interrupted=any(p.interrupted for p in parts),
                       by_gateway_cache=by_gateway)  # fmt: skip
