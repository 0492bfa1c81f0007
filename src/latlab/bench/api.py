"""``run_bench(config, target)``: the one call behind ``latlab bench`` and ``latlab optimize``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from latlab.bench import calibrate
from latlab.bench.contract import GenOptions, Progress, Target
from latlab.bench.loop import run_on_loop
from latlab.bench.results import BenchResult
from latlab.bench.runner import LevelResult, Runner
from latlab.errors import ConfigError
from latlab.metrics import SLO
from latlab.prompt_words import Salt
from latlab.workload import LengthDist, WorkloadSpec, build_requests

_PROMPTS_FOR_DURATION = 1000  # a duration run cycles through this many distinct prompts
_MAX_DISTINCT_PROMPTS = 10_000  # longer runs repeat prompts (building more takes too long)


@dataclass(slots=True)
class BenchConfig:
    """One benchmark run: load levels, request budget, workload, generation settings."""

    concurrency: list[int] | None = None  # closed loop, one level each (default [1])
    rate: list[float] | None = None  # open loop requests/s, one level each (inf = all at once)
    burstiness: float = 1.0  # gamma shape of open-loop gaps: 1 = Poisson, < 1 burstier
    num_requests: int | None = 100  # per level
    duration_s: float | None = None  # per level; with num_requests, whichever ends first
    warmup: int = 2  # requests sent before the first level and excluded from every figure
    input_len: str = "128"  # N | uniform:LO:HI | normal:MEAN:STD (tokens)
    output_len: str = "128"
    dataset: str = "synthetic"  # synthetic | jsonl:FILE | sharegpt:FILE | shared-prefix
    prefix_groups: int = 4
    prefix_len: int = 256
    api: str = "completions"
    stream: bool = True
    seed: int = 0
    slo: SLO | None = None
    ignore_eos: bool = True
    min_tokens: int | None = None
    temperature: float = 0.0
    drain_s: float = 5.0  # after Ctrl-C, how long in-flight requests may finish
    workers: int = 1  # client processes sharing each level (HTTP targets only)
    # Per-run value behind the tag at the front of every prompt (see latlab.prompt_words):
    # None picks a random one (recorded in the result), "" sends prompts unsalted.
    salt: str | None = None
    # Each level measured this many times, interleaved (1,4,1,4...) so drift hits all alike.
    repeats: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the JSON as given

    def __post_init__(self) -> None:
        if self.concurrency and self.rate:
            raise ConfigError("give --concurrency (closed loop) or --rate (open loop), not both")
        if not self.concurrency and not self.rate:
            self.concurrency = [1]
        if any(c < 1 for c in self.concurrency or ()):
            raise ConfigError("--concurrency values must be >= 1")
        if any(not r > 0 for r in self.rate or ()):
            raise ConfigError("--rate values must be > 0 (inf sends everything at once)")
        if self.num_requests is None and self.duration_s is None:
            raise ConfigError("give --num-requests or --duration")
        if self.num_requests is not None and self.num_requests < 1:
            raise ConfigError("--num-requests must be >= 1")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError("--duration must be > 0 seconds")
        if self.warmup < 0:
            raise ConfigError("--warmup must be >= 0")
        if self.workers < 1:
            raise ConfigError("--workers must be >= 1")
        streamed_slo = self.slo is not None and (self.slo.ttft_ms, self.slo.tpot_ms) != (None, None)
        if not self.stream and streamed_slo:
            raise ConfigError(
                "--no-stream measures no TTFT or TPOT (the first token arrives with the last): "
                "use --slo-e2e-ms, or stream"
            )
        if self.repeats < 1:
            raise ConfigError("--repeats must be >= 1")
        if any(math.isinf(r) for r in self.rate or ()) and self.num_requests is None:
            raise ConfigError("--rate inf sends everything at once: give --num-requests")
        LengthDist.parse(self.input_len, "--input-len")
        LengthDist.parse(self.output_len, "--output-len")

    def levels(self) -> list[dict[str, Any]]:
        """Every level to run, in order; with repeats, ``{"concurrency": 4, "repeat": 1}``."""
        if self.rate:
            loads: list[dict[str, Any]] = [{"rate": r} for r in self.rate]
        else:
            loads = [{"concurrency": c} for c in self.concurrency or [1]]
        if self.repeats == 1:
            return loads
        return [{**load, "repeat": r} for r in range(self.repeats) for load in loads]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["slo"] = None if self.slo is None else self.slo.to_dict()
        d["rate"] = None if self.rate is None else [_json_num(r) for r in self.rate]
        return d


def _json_num(x: float) -> float | str:
    return "inf" if math.isinf(x) else x


class RichProgress:
    """Live progress bar: completed / failed requests and a running TTFT p50."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._p = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ok {task.fields[ok]}  failed {task.fields[failed]}"),
            TextColumn("TTFT p50 {task.fields[ttft]}"),
            refresh_per_second=4,
            transient=False,
            console=Console(stderr=True),
        )
        self._task: Any = None

    def start_level(self, label: str, total: int | None) -> None:
        self._p.start()
        self._task = self._p.add_task(label, total=total, ok=0, failed=0, ttft="-")

    def update(self, completed: int, failed: int, ttft_p50_ms: float | None) -> None:
        ttft = "-" if ttft_p50_ms is None else f"{ttft_p50_ms:.1f} ms"
        self._p.update(self._task, completed=completed + failed, ok=completed, failed=failed,
                       ttft=ttft)  # fmt: skip

    def end_level(self) -> None:
        self._p.stop()


# Chooses the levels as the run goes: given the last level measured (None at first), the next
# (load, requests or None for the config's count), or None to stop. ``latlab bench --find``
# searches this way; without a plan the config's levels run in order.
LevelPlan = Callable[[LevelResult | None], tuple[dict[str, Any], int | None] | None]


def _fixed_plan(levels: list[dict[str, Any]]) -> LevelPlan:
    remaining = iter(levels)

    def plan(_last: LevelResult | None) -> tuple[dict[str, Any], int | None] | None:
        load = next(remaining, None)
        return None if load is None else (load, None)

    return plan


async def arun_bench(
    config: BenchConfig,
    target: Target,
    progress: bool | Progress = True,
    runner_hook: Any = None,
    plan: LevelPlan | None = None,
) -> BenchResult:
    """The async form of :func:`run_bench` (for callers already inside an event loop)."""
    spec = WorkloadSpec(
        dataset=config.dataset,
        input_len=config.input_len,
        output_len=config.output_len,
        num_prompts=min(config.num_requests or _PROMPTS_FOR_DURATION, _MAX_DISTINCT_PROMPTS),
        prefix_groups=config.prefix_groups,
        prefix_len=config.prefix_len,
        seed=config.seed,
    )
    sink: Progress | None = RichProgress() if progress is True else (progress or None)
    opts = GenOptions(ignore_eos=config.ignore_eos, temperature=config.temperature,
                      stream=config.stream, min_tokens=config.min_tokens)  # fmt: skip
    runner = Runner(target, [], opts, num_requests=config.num_requests,
                    duration_s=config.duration_s, slo=config.slo, burstiness=config.burstiness,
                    seed=config.seed, drain_s=config.drain_s, progress=sink)  # fmt: skip
    described: dict[str, Any] = {"name": target.name, "remote": bool(target.remote)}
    if target.settings:  # what an in-process engine was built with
        described["settings"] = dict(target.settings)
    result = BenchResult(target=described, config=config.to_dict())
    if runner_hook is not None:
        runner_hook(runner)
    pool: Any = None
    with _signals_stop(runner, lambda: pool.stop() if pool is not None else None):
        try:
            await target.check()
            await _build_workload(config, spec, target, runner, result)
            users = int(config.levels()[0].get("concurrency", 4))
            result.warmup_requests = await runner.warmup(config.warmup, users)
            if config.workers > 1:
                pool = await _start_pool(config, target, runner)
            next_level = plan or _fixed_plan(config.levels())
            step = next_level(None)
            while step is not None and not runner.stopped:
                load, count = step
                runner.num_requests = count or config.num_requests
                if pool is None:
                    level: LevelResult = await runner.run_level(load)
                else:
                    level = await _pooled_level(pool, load, runner.num_requests, sink)
                result.levels.append(level)
                step = next_level(level)
        finally:
            result.interrupted = runner.stopped
            if pool is not None:
                pool.close()
            await target.aclose()
    return result


async def _build_workload(
    config: BenchConfig, spec: WorkloadSpec, target: Target, runner: Runner, result: BenchResult
) -> None:
    """Prompts of exact length in the target's tokens, salted per run unless asked not to."""
    sizing = await calibrate.prompt_sizing(target)
    words = sizing.words
    value = secrets.token_hex(4) if config.salt is None else config.salt
    salt = Salt(value=value, words=words.words) if value else None
    count = sizing.local_count
    runner.requests = build_requests(spec, words, salt=salt, count_text=count)
    warm = WorkloadSpec(**{**asdict(spec), "num_prompts": max(1, config.warmup),
                           "seed": config.seed + 1})  # fmt: skip
    runner.warmup_requests = build_requests(warm, words, salt=salt, count_text=count)
    await calibrate.resolve_replies([*runner.requests, *runner.warmup_requests], sizing)
    runner.salt = salt
    result.workload = {"salt": value or None, "prompt_words": sizing.to_dict()}


async def _start_pool(config: BenchConfig, target: Target, runner: Runner) -> Any:
    from latlab.bench.workers import WorkerPool, WorkerSettings

    spec = target.spec()
    if spec is None:
        raise ConfigError("--workers > 1 needs an HTTP target (--url)")
    settings = WorkerSettings(spec, runner.opts, runner.requests, config.slo,
                              config.burstiness, config.seed, config.drain_s,
                              config.duration_s, "auto", runner.salt)  # fmt: skip
    pool = WorkerPool(config.workers, settings)
    await pool.start()
    return pool


async def _pooled_level(
    pool: Any, load: dict[str, Any], count: int | None, sink: Progress | None
) -> LevelResult:
    if sink is not None:
        sink.start_level(", ".join(f"{k} {v:g}" for k, v in load.items()), count)
    update = sink.update if sink is not None else None
    level: LevelResult = await pool.run_level(load, count, update)
    if sink is not None:
        s = level.summary
        sink.update(s.completed, s.failed, s.ttft_ms.p50)
        sink.end_level()
    return level


def run_bench(
    config: BenchConfig,
    target: Target,
    progress: bool | Progress = True,
    loop: str = "auto",
    plan: LevelPlan | None = None,
) -> BenchResult:
    """Run every load level of ``config`` (or those ``plan`` picks) against ``target``;
    Ctrl-C stops and keeps results.

    ``loop``: "auto" uses uvloop when it is installed (its C event loop costs the client a
    fraction of asyncio's CPU per streamed chunk), "uvloop" requires it, "asyncio" never uses it.
    """
    return run_on_loop(lambda: arun_bench(config, target, progress, plan=plan), loop)


@contextlib.contextmanager
def _signals_stop(runner: Runner, also: Any = None) -> Any:
    """First Ctrl-C (or SIGTERM, from ``timeout`` or a cancelled CI job): stop sending and
    drain, so what was measured is still reported and written; a second one cancels in-flight
    requests at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    presses = 0

    def on_sigint() -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            runner.drain_s = 0.0
        runner.request_stop()
        if also is not None:
            also()

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_sigint)
    except (NotImplementedError, RuntimeError):  # e.g. Windows
        yield
        return
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
