"""The highest concurrency (closed loop) or request rate (open loop) at which an SLO percentile
holds: doubling to bracket it, then bisection to a stated tolerance.

Each probe is judged on the *interval* of its percentile, not the point estimate: it meets the
SLO when the interval's top is within it, fails when the interval's bottom is beyond it, and is
undetermined when the interval straddles it. An undetermined probe is measured again with twice
the requests (pooled), up to ``max_remeasure`` times; if it still straddles, the search stops and
says so instead of guessing. Failed requests count against every objective. The search assumes
latency does not fall as load rises (true of a queue; a non-monotonic server can mislead it).

``CapacitySearch.next_probe`` is a :data:`latlab.bench.api.LevelPlan`, so the same search runs
against any bench target: a URL, an in-process engine, a launched backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from latlab.bootstrap import Interval, Sample, Statistic, interval, requests_for_tail
from latlab.errors import ConfigError
from latlab.metrics import RequestRecord, summarize

_FIGURES = {"ttft": "ttft_ns", "tpot": "tpot_ns", "e2e": "e2e_ns"}
_FAILED_AS = 10.0  # a failed request counts as this many times the objective


@dataclass(kw_only=True, slots=True, frozen=True)
class SearchSpec:
    """What to find and how precisely."""

    variable: str  # "concurrency" | "rate"
    objectives: dict[str, float]  # figure -> limit in ms: {"ttft": 500, "tpot": 50}
    percentile: float = 99.0
    start: float = 1.0
    limit: float = 1024.0  # the highest load tried
    tolerance: float = 0.1  # relative width of the final bracket (concurrency: at least 1)
    min_requests: int = 0  # per probe; raised to what the percentile needs
    max_remeasure: int = 2
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.variable not in ("concurrency", "rate"):
            raise ConfigError("--find takes max-concurrency or max-rate")
        if not self.objectives:
            raise ConfigError(
                "--find needs an objective: --slo-ttft-ms, --slo-tpot-ms or --slo-e2e-ms"
            )
        if not 50 <= self.percentile < 100:
            raise ConfigError("--slo-percentile must be in [50, 100), e.g. 99")
        if not self.start > 0 or self.limit < self.start:
            raise ConfigError("--find-start must be > 0 and at most --find-max")
        if not 0 < self.tolerance < 1:
            raise ConfigError("--find-tolerance must be between 0 and 100%, e.g. 10%")

    def requests_for(self, value: float) -> int:
        """Requests a probe needs: 5 beyond the percentile, 8 per user, at least min_requests."""
        users = value if self.variable == "concurrency" else 1
        return max(self.min_requests, requests_for_tail(self.percentile), math.ceil(8 * users))


@dataclass(kw_only=True, slots=True)
class Probe:
    """One load value: its pooled records and the verdict on each objective."""

    value: float
    records: list[RequestRecord] = field(default_factory=list)
    intervals: dict[str, Interval] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)  # meets | fails | undetermined
    measured: int = 0  # times measured (re-measures pool their records)
    requests_per_s: float = 0.0
    tokens_per_s: float = 0.0
    goodput_rps: float | None = None

    @property
    def verdict(self) -> str:
        if "fails" in self.verdicts.values():
            return "fails"
        if "undetermined" in self.verdicts.values():
            return "undetermined"
        return "meets"

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "requests": len(self.records),
            "measured": self.measured,
            "verdict": self.verdict,
            "verdicts": dict(self.verdicts),
            "intervals": {k: iv.to_dict() for k, iv in self.intervals.items()},
            "requests_per_s": self.requests_per_s,
            "tokens_per_s": self.tokens_per_s,
            "goodput_rps": self.goodput_rps,
        }


def judge(
    records: list[RequestRecord], spec: SearchSpec, seed: int = 0
) -> tuple[dict[str, Interval], dict[str, str]]:
    """Each objective's percentile interval and verdict over ``records``."""
    stat = Statistic(kind="percentile", q=spec.percentile)
    intervals, verdicts = {}, {}
    for i, (figure, limit) in enumerate(spec.objectives.items()):
        prop = _FIGURES[figure]
        values = [v / 1e6 for r in records if r.ok and (v := getattr(r, prop)) is not None]
        values += [_FAILED_AS * limit] * sum(1 for r in records if not r.ok)
        if not values:
            intervals[figure] = Interval(
                estimate=math.inf,
                low=math.inf,
                high=math.inf,
                confidence=spec.confidence,
                method="none",
            )
            verdicts[figure] = "fails"
            continue
        iv = interval(Sample.of(values), stat, confidence=spec.confidence, seed=seed + i)
        intervals[figure] = iv
        verdicts[figure] = (
            "meets" if iv.high <= limit else "fails" if iv.low > limit else "undetermined"
        )
    return intervals, verdicts


@dataclass(kw_only=True, slots=True)
class CapacitySearch:
    """Bracket, then bisect; feed it each measured level through :meth:`next_probe`."""

    spec: SearchSpec
    slo: Any = None  # latlab.metrics.SLO, for goodput at each probe
    probes: dict[float, Probe] = field(default_factory=dict)
    order: list[float] = field(default_factory=list)
    lo: float | None = None  # highest load that met the SLO
    hi: float | None = None  # lowest load that failed it
    status: str = "searching"  # found | none | above-limit | undetermined | interrupted
    _current: float | None = None

    # ---------------------------------------------------------------- the plan
    def next_probe(self, last: Any) -> tuple[dict[str, Any], int] | None:
        """A :data:`~latlab.bench.api.LevelPlan`: the next (load, requests), or None when done."""
        if last is not None and self._current is not None:
            self._record(self._current, last)
        value = self._decide()
        if value is None:
            return None
        self._current = value
        probe = self.probes.setdefault(value, Probe(value=value))
        if value not in self.order:
            self.order.append(value)
        extra = 2**probe.measured  # a re-measure adds twice the requests measured so far
        return self._load(value), self.spec.requests_for(value) * extra

    def _load(self, value: float) -> dict[str, Any]:
        if self.spec.variable == "concurrency":
            return {"concurrency": int(value)}
        return {"rate": value}

    def _record(self, value: float, level: Any) -> None:
        probe = self.probes[value]
        probe.records += list(level.records)
        probe.measured += 1
        probe.intervals, probe.verdicts = judge(probe.records, self.spec, seed=len(self.order))
        s = level.summary
        probe.requests_per_s, probe.tokens_per_s = s.requests_per_s, s.output_tokens_per_s
        if self.slo is not None:
            probe.goodput_rps = summarize(
                level.records, self.slo, duration_s=s.duration_s
            ).goodput_rps

    def _decide(self) -> float | None:
        if self._current is None:
            return self._round(self.spec.start)
        probe = self.probes[self._current]
        verdict = probe.verdict
        if verdict == "undetermined":
            if probe.measured <= self.spec.max_remeasure:
                return self._current
            return self._stop("undetermined")
        if verdict == "meets":
            self.lo = self._current
        else:
            self.hi = self._current
            if self.lo is None:
                return self._stop("none")
        if self.hi is None:
            if self._current >= self.spec.limit:
                return self._stop("above-limit")
            return self._round(min(self._current * 2, self.spec.limit))
        return self._bisect()

    def _bisect(self) -> float | None:
        lo, hi = self.lo or self.spec.start, self.hi or self.spec.limit
        if self.spec.variable == "concurrency":
            if hi - lo <= max(1.0, self.spec.tolerance * lo):
                return self._stop("found")
            return float((int(lo) + int(hi)) // 2)
        if hi - lo <= self.spec.tolerance * lo:
            return self._stop("found")
        return self._round((lo + hi) / 2)

    def _round(self, value: float) -> float:
        if self.spec.variable == "concurrency":
            return float(max(1, round(value)))
        return float(f"{value:.4g}")

    def _stop(self, status: str) -> None:
        self.status = status
        return None

    # ---------------------------------------------------------------- the answer
    @property
    def last_probed(self) -> float | None:
        return self._current

    @property
    def answer(self) -> float | None:
        """The highest load measured to meet the SLO (None when none did)."""
        return self.lo

    def best_probe(self) -> Probe | None:
        """When nothing met the SLO: the probe closest to meeting it."""
        if not self.probes:
            return None

        def excess(p: Probe) -> float:
            return max(
                (iv.estimate / self.spec.objectives[k] for k, iv in p.intervals.items()),
                default=math.inf,
            )

        return min(self.probes.values(), key=excess)

    def to_dict(self) -> dict[str, Any]:
        best = self.best_probe()
        return {
            "variable": self.spec.variable,
            "objectives_ms": dict(self.spec.objectives),
            "percentile": self.spec.percentile,
            "tolerance": self.spec.tolerance,
            "confidence": self.spec.confidence,
            "status": self.status,
            "answer": self.answer,
            "bracket": [self.lo, self.hi],
            "goodput_rps_at_answer": None if self.lo is None else self.probes[self.lo].goodput_rps,
            "best_probe": None if best is None else best.value,
            "probes": [self.probes[v].to_dict() for v in self.order],
        }
