"""The figures of each load level of a run, as the report draws them.

Latency samples pool the level's repeats; rates (tokens/s, requests/s, goodput) are the mean of
the repeats' own rates, since each repeat has its own measuring window.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from latlab.compare.samples import LevelSamples, levels_of
from latlab.metrics import SLO, RequestRecord, Stats, summarize
from latlab.runs.store import Run

_NS_PER_MS = 1_000_000
LATENCY_FIGURES = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT", "e2e": "E2E"}


@dataclass(kw_only=True, slots=True)
class LevelView:
    label: str
    load: dict[str, Any]
    values: dict[str, list[float]]  # figure -> sorted ms values (ttft, itl, tpot, e2e)
    stats: dict[str, Stats]
    tokens_per_s: float
    requests_per_s: float
    goodput_rps: float | None
    completed: int
    failed: int
    tokens_per_chunk: Counter[int]
    timeline: list[RequestRecord] = field(default_factory=list)  # the first repeat's records

    @property
    def x(self) -> float | None:
        """The load as a number (concurrency or rate); None for rate inf or none."""
        for key in ("concurrency", "rate"):
            value = self.load.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
        return None

    @property
    def load_kind(self) -> str:
        return "rate" if "rate" in self.load else "concurrency"


def _values(records: list[RequestRecord]) -> dict[str, list[float]]:
    ok = [r for r in records if r.ok]
    out = {
        "ttft": [v / _NS_PER_MS for r in ok if (v := r.ttft_ns) is not None],
        "tpot": [v / _NS_PER_MS for r in ok if (v := r.tpot_ns) is not None],
        "e2e": [v / _NS_PER_MS for r in ok if (v := r.e2e_ns) is not None],
        "itl": [g / _NS_PER_MS for r in ok for g in r.itl_ns()],
    }
    return {k: sorted(v) for k, v in out.items()}


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _view(level: LevelSamples, slo: SLO | None) -> LevelView:
    pooled = [r for rep in level.repeats for r in rep]
    summaries = [summarize(rep, slo) for rep in level.repeats if rep]
    values = _values(pooled)
    goodputs = [s.goodput_rps for s in summaries if s.goodput_rps is not None]
    per_chunk: Counter[int] = Counter(k for r in pooled if r.ok for k in r.chunk_tokens)
    return LevelView(
        label=level.label,
        load=level.load,
        values=values,
        stats={k: Stats.of(v) for k, v in values.items()},
        tokens_per_s=_mean([s.output_tokens_per_s for s in summaries]),
        requests_per_s=_mean([s.requests_per_s for s in summaries]),
        goodput_rps=_mean(goodputs) if goodputs else None,
        completed=sum(s.completed for s in summaries),
        failed=sum(s.failed for s in summaries),
        tokens_per_chunk=per_chunk,
        timeline=level.repeats[0] if level.repeats else [],
    )


def level_views(run: Run) -> list[LevelView]:
    """The run's levels in the order measured (repeats folded into their level)."""
    levels = levels_of(run.result)
    slo = next(iter(levels.values())).slo if levels else None
    return [_view(level, slo) for level in levels.values()]


def slo_of(run: Run) -> dict[str, float]:
    slo = (run.result.get("config") or {}).get("slo") or {}
    return {k: float(v) for k, v in slo.items() if v is not None}
