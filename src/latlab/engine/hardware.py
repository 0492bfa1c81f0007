"""What this machine's CPU does fast, and how many threads the engine should run on it.

The engine's fastest CPU path depends on the chip: oneDNN runs bf16 matmuls only where the CPU
has bf16 instructions (AVX-512 BF16, AMX) and otherwise falls back to a path measured 5-6x
slower than float32 on an AVX2-only EPYC (docs/engine.md); int8 GEMMs use VNNI/AMX dot products
where present and AVX2's ``vpmaddubsw`` where not. Thread count matters as much: two OpenMP
threads on a machine whose cores are busy wait on each other at every barrier, which measured
2-10x slower than one thread, while on an idle machine two threads are 1.4-1.5x faster. So the
engine looks at the CPU and the load once, at start, and says what it chose and why.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from latlab.environment import cpu_model


@dataclass(kw_only=True, slots=True, frozen=True)
class CpuCapabilities:
    """The instruction-set facts the engine's kernel choices depend on."""

    model: str
    isa: str  # torch's kernel dispatch level: "AVX2", "AVX512", ...
    native_bf16: bool  # bf16 matmuls in hardware (AVX-512 BF16 or AMX)
    native_fp16: bool  # fp16 matmuls in hardware (AMX-FP16)
    int8_dot: str  # "amx", "vnni" or "avx2" (vpmaddubsw, 16-bit intermediate sums)
    fbgemm: bool  # torch's fbgemm int8 GEMMs are built in
    cores: int  # cores this process may run on (its affinity mask)
    amx_bf16: bool = False  # AMX tiles (bf16 tile multiplies: every AMX CPU so far has them)

    def summary(self) -> str:
        bf16 = "native bf16" if self.native_bf16 else "no bf16 instructions"
        return f"{self.model}, {self.cores} cores, {self.isa}, {bf16}, int8 dot: {self.int8_dot}"

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


def _cpu_has(feature: str) -> bool:
    """torch's private cpuinfo check ``torch.cpu._is_<feature>_supported``; False where this
    torch lacks it (they come and go between releases; a GPU machine's torch may be older)."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(probe()) if probe is not None else False


@functools.cache
def cpu_capabilities() -> CpuCapabilities:
    """Probe once per process (torch's own cpuinfo checks; no subprocess)."""
    amx = _cpu_has("amx_tile")
    if amx:
        int8_dot = "amx"
    elif _cpu_has("vnni"):
        int8_dot = "vnni"
    else:
        int8_dot = "avx2" if _cpu_has("avx2") else "none"
    return CpuCapabilities(
        model=cpu_model(),
        isa=torch.backends.cpu.get_cpu_capability(),
        native_bf16=_cpu_has("avx512_bf16") or amx,
        native_fp16=_cpu_has("amx_fp16"),
        int8_dot=int8_dot,
        fbgemm="fbgemm" in torch.backends.quantized.supported_engines,
        cores=usable_cores(),
        amx_bf16=amx,
    )


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@dataclass(kw_only=True, slots=True, frozen=True)
class ThreadChoice:
    """The engine's thread count and the reason, as the start-up report states it."""

    threads: int
    reason: str
    omp_proc_bind: str | None  # OMP_PROC_BIND as the OpenMP runtime read it (None: unset)
    omp_wait_policy: str | None


@dataclass(kw_only=True, slots=True, frozen=True)
class CoreLoad:
    """How many of this process's cores other jobs keep busy, and how that was measured."""

    busy: float  # cores' worth of other processes' CPU time
    source: str  # "over the last 0.2 s" or "1-minute load average"


def choose_threads(requested: int | None, cores: int, load: CoreLoad) -> ThreadChoice:
    """``requested`` when given; else one thread per core that other jobs leave free.

    OpenMP threads synchronise at every parallel op, so a thread placed on a busy core stalls
    the others; on a loaded machine fewer threads finish sooner.
    """
    env = os.environ
    bind, wait = env.get("OMP_PROC_BIND"), env.get("OMP_WAIT_POLICY")
    if requested is not None:
        return ThreadChoice(
            threads=requested, reason="num_threads set", omp_proc_bind=bind, omp_wait_policy=wait
        )
    free = free_cores(cores, load.busy)
    seen = f"other processes busy on {load.busy:.1f} cores, {load.source}"
    if free == cores:
        reason = f"all {cores} cores ({seen})"
    else:
        reason = (
            f"{free} of {cores} cores: {seen}, and an OpenMP thread on a busy core stalls "
            "every parallel op"
        )
    return ThreadChoice(threads=free, reason=reason, omp_proc_bind=bind, omp_wait_policy=wait)


def free_cores(cores: int, busy: float) -> int:
    """Threads to run: the cores others leave free, at least one."""
    return max(1, min(cores, round(cores - busy)))


_SAMPLE_S = 0.2
_SAMPLE_REUSE_S = 10.0
_last_sample: tuple[float, CoreLoad] | None = None


def other_load() -> CoreLoad:
    """Other processes' CPU use on our cores now, from ``/proc/stat`` over 0.2 s.

    The 1-minute load average lags by a minute: right after a benchmark ends it still says the
    cores are busy (the engine once chose 1 of 2 idle cores from it). A short sample sees the
    machine as it is; the load average is the fallback where ``/proc/stat`` is not readable.
    One sample serves every engine a process starts within 10 s (tests start many).
    """
    global _last_sample
    now = time.monotonic()
    if _last_sample is not None and now - _last_sample[0] < _SAMPLE_REUSE_S:
        return _last_sample[1]
    busy = sample_busy_cores(_SAMPLE_S)
    if busy is None:
        load = CoreLoad(busy=load_average(), source="1-minute load average")
    else:
        load = CoreLoad(busy=busy, source=f"over the last {_SAMPLE_S:g} s")
    _last_sample = (now, load)
    return load


def sample_busy_cores(window_s: float) -> float | None:
    """Cores' worth of CPU time others used on our affinity cores during ``window_s``."""
    cpus = affinity_cpus()
    t0, own0, before = time.monotonic(), time.process_time(), cpu_jiffies(cpus)
    time.sleep(window_s)
    t1, own1, after = time.monotonic(), time.process_time(), cpu_jiffies(cpus)
    return others_busy_cores(cpus, before, after, own_s=own1 - own0, wall_s=t1 - t0)


def others_busy_cores(
    cpus: list[int],
    before: dict[int, tuple[int, int]] | None,
    after: dict[int, tuple[int, int]] | None,
    *,
    own_s: float,
    wall_s: float,
) -> float | None:
    """Cores' worth of other processes' CPU time between two ``/proc/stat`` readings: all the
    busy time on ``cpus`` less this process's own (``own_s`` of CPU over ``wall_s``)."""
    if before is None or after is None or wall_s <= 0:
        return None
    busy = sum(after[c][0] - before[c][0] for c in cpus)
    total = sum(after[c][1] - before[c][1] for c in cpus)
    if total <= 0:
        return None
    return max(0.0, len(cpus) * busy / total - own_s / wall_s)


def affinity_cpus() -> list[int]:
    """The CPUs this process may run on (empty where the platform does not say)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def cpu_jiffies(cpus: list[int]) -> dict[int, tuple[int, int]] | None:
    """Per CPU: (busy, total) jiffies from ``/proc/stat``; None where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    out: dict[int, tuple[int, int]] = {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        out[int(name[3:])] = (sum(values) - idle, sum(values))
    return out if cpus and all(c in out for c in cpus) else None


class ThreadFollower:
    """Re-decides the thread count between engine steps as other jobs come and go.

    The choice at start is right only until another job starts: two OpenMP threads with a busy
    second core measured 3-10x slower than one thread. Every ``interval_s`` of stepping this
    reads ``/proc/stat`` (about 50 us; the deltas since the last look, no sleep), subtracts this
    process's own CPU time, and moves to the new count once two looks in a row agree, so one
    burst of someone else's work does not make the engine flap.
    """

    def __init__(
        self,
        *,
        threads: int,
        interval_s: float = 1.0,
        read: Callable[[list[int]], dict[int, tuple[int, int]] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        own_cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self.cpus = affinity_cpus()
        self.threads, self.interval_s, self.changes = threads, interval_s, 0
        self._read, self._clock, self._own_cpu = read or cpu_jiffies, clock, own_cpu
        self._pending: int | None = None
        self._mark = self._snapshot()

    def reset(self, threads: int) -> None:
        """Start over from ``threads`` (a benchmark setting the count by hand)."""
        self.threads, self.changes, self._pending = threads, 0, None
        self._mark = self._snapshot()

    def _snapshot(self) -> tuple[float, float, dict[int, tuple[int, int]] | None]:
        return self._clock(), self._own_cpu(), self._read(self.cpus)

    def check(self) -> int | None:
        """The new thread count when it should change now, else None (cheap when not due)."""
        if self._clock() - self._mark[0] < self.interval_s:
            return None
        (t0, own0, before), (t1, own1, after) = self._mark, self._snapshot()
        self._mark = (t1, own1, after)
        if t1 - t0 > 5 * self.interval_s:
            return None  # idle for a while: the next interval decides
        others = others_busy_cores(self.cpus, before, after, own_s=own1 - own0, wall_s=t1 - t0)
        if others is None:
            return None
        wanted = free_cores(len(self.cpus), others)
        if wanted == self.threads or wanted != self._pending:
            self._pending = None if wanted == self.threads else wanted
            return None
        self.threads, self._pending, self.changes = wanted, None, self.changes + 1
        return wanted


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - non-POSIX
        return 0.0
