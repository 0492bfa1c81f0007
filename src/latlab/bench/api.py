"""``run_bench(config, target)``: the one call behind ``latlab bench`` and ``latlab optimize``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from latlab.bench import calibrate
from latlab.bench.config import BenchConfig
from latlab.bench.contract import GenOptions, Progress, Target
from latlab.bench.loop import run_on_loop
from latlab.bench.results import BenchResult
from latlab.bench.runner import LevelResult, Runner
from latlab.errors import ConfigError
from latlab.prompt_words import Salt
from latlab.workload import WorkloadSpec, build_requests

if TYPE_CHECKING:
    from latlab.bench.workers import WorkerPool

_PROMPTS_FOR_DURATION = 1000  # a duration run cycles through this many distinct prompts
_MAX_DISTINCT_PROMPTS = 10_000  # longer runs repeat prompts (building more takes too long)


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


def _workload(config: BenchConfig) -> tuple[WorkloadSpec, WorkloadSpec]:
    """The measured prompts' spec and the warmup prompts' (another seed: no cache reuse)."""
    spec = WorkloadSpec(
        dataset=config.dataset,
        input_len=config.input_len,
        output_len=config.output_len,
        num_prompts=min(config.num_requests or _PROMPTS_FOR_DURATION, _MAX_DISTINCT_PROMPTS),
        prefix_groups=config.prefix_groups,
        prefix_len=config.prefix_len,
        seed=config.seed,
    )
    warm = WorkloadSpec(**{**asdict(spec), "num_prompts": max(1, config.warmup),
                           "seed": config.seed + 1})  # fmt: skip
    return spec, warm


def _described(target: Target) -> dict[str, Any]:
    described: dict[str, Any] = {"name": target.name, "remote": bool(target.remote)}
    if target.settings:  # what an in-process engine was built with
        described["settings"] = dict(target.settings)
    return described


async def arun_bench(
    config: BenchConfig,
    target: Target,
    progress: bool | Progress = True,
    runner_hook: Any = None,
    plan: LevelPlan | None = None,
) -> BenchResult:
    """The async form of :func:`run_bench` (for callers already inside an event loop)."""
    sink: Progress | None = RichProgress() if progress is True else (progress or None)
    opts = GenOptions(ignore_eos=config.ignore_eos, temperature=config.temperature,
                      stream=config.stream, min_tokens=config.min_tokens)  # fmt: skip
    runner = Runner(target, [], opts, settings=config.run_settings(), progress=sink)
    result = BenchResult(target=_described(target), config=config.to_dict())
    if runner_hook is not None:
        runner_hook(runner)
    pool: WorkerPool | None = None
    with _signals_stop(runner, lambda: pool.stop() if pool is not None else None):
        try:
            await target.check()
            await _build_workload(config, target, runner, result)
            users = int(config.levels()[0].get("concurrency", 4))
            result.warmup_requests = await runner.warmup(config.warmup, users)
            if config.workers > 1:
                pool = await _start_pool(config, target, runner)
            next_level = plan or _fixed_plan(config.levels())
            step = next_level(None)
            while step is not None and not runner.stopped:
                load, count = step
                count = count or config.num_requests
                runner.settings = dataclasses.replace(runner.settings, num_requests=count)
                if pool is None:
                    level: LevelResult = await runner.run_level(load)
                else:
                    level = await _pooled_level(pool, load, count, sink)
                result.levels.append(level)
                step = next_level(level)
        finally:
            result.interrupted = runner.stopped
            if pool is not None:
                pool.close()
            await target.aclose()
    return result


async def _build_workload(
    config: BenchConfig, target: Target, runner: Runner, result: BenchResult
) -> None:
    """Prompts of exact length in the target's tokens, salted per run unless asked not to."""
    sizing = await calibrate.prompt_sizing(target)
    words = sizing.words
    value = secrets.token_hex(4) if config.salt is None else config.salt
    salt = Salt(value=value, words=words.words) if value else None
    count = sizing.local_count
    spec, warm = _workload(config)
    runner.requests = build_requests(spec, words, salt=salt, count_text=count)
    runner.warmup_requests = build_requests(warm, words, salt=salt, count_text=count)
    await calibrate.resolve_replies([*runner.requests, *runner.warmup_requests], sizing)
    runner.settings = dataclasses.replace(runner.settings, salt=salt)
    result.workload = {"salt": value or None, "prompt_words": sizing.to_dict()}


async def _start_pool(config: BenchConfig, target: Target, runner: Runner) -> WorkerPool:
    from latlab.bench.workers import WorkerPool, WorkerSettings

    spec = target.spec()
    if spec is None:
        raise ConfigError("--workers > 1 needs an HTTP target (--url)")
    settings = WorkerSettings(target=spec, opts=runner.opts, requests=runner.requests,
                              run=runner.settings, loop="auto")  # fmt: skip
    pool = WorkerPool(config.workers, settings)
    await pool.start()
    return pool


async def _pooled_level(
    pool: WorkerPool, load: dict[str, Any], count: int | None, sink: Progress | None
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
