"""``compare_runs(a, b)``: per load level and figure, B - A with a bootstrap interval, a verdict,
and whether it is a regression beyond a limit; plus what else changed between the runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from latlab.bootstrap import Interval, difference, estimate
from latlab.compare.figures import Figure
from latlab.compare.provenance import provenance_diff, workload_diff
from latlab.compare.samples import LevelSamples, levels_of
from latlab.errors import ConfigError
from latlab.runs.store import Run


@dataclass(kw_only=True, slots=True)
class Row:
    """One figure at one load level."""

    level: str
    figure: Figure
    a: float | None
    b: float | None
    diff: Interval | None
    verdict: str  # faster | slower | no difference | not measured
    regression: bool = False

    @property
    def change_pct(self) -> float | None:
        if self.diff is None or not self.a:
            return None
        return 100 * self.diff.estimate / self.a

    def to_dict(self) -> dict[str, Any]:
        d = self.diff
        return {
            "level": self.level,
            "figure": self.figure.name,
            "unit": self.figure.unit,
            "higher_is_better": self.figure.higher_is_better,
            "a": self.a,
            "b": self.b,
            "difference": None if d is None else d.to_dict(),
            "change_pct": self.change_pct,
            "change_pct_low": _pct(d.low, self.a) if d else None,
            "change_pct_high": _pct(d.high, self.a) if d else None,
            "verdict": self.verdict,
            "regression": self.regression,
        }


def _pct(value: float, base: float | None) -> float | None:
    return None if not base else 100 * value / base


@dataclass(kw_only=True, slots=True)
class Comparison:
    a: Run
    b: Run
    rows: list[Row]
    confidence: float
    resamples: int
    min_effect_pct: float
    fail_on_regression_pct: float | None
    changed: list[tuple[str, Any, Any]] = field(default_factory=list)
    workload_changes: list[tuple[str, Any, Any]] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regression]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"ref": self.a.where, **self.a.info.to_dict()},
            "b": {"ref": self.b.where, **self.b.info.to_dict()},
            "confidence": self.confidence,
            "resamples": self.resamples,
            "min_effect_pct": self.min_effect_pct,
            "fail_on_regression_pct": self.fail_on_regression_pct,
            "rows": [r.to_dict() for r in self.rows],
            "regressions": len(self.regressions),
            "changed": [{"key": k, "a": va, "b": vb} for k, va, vb in self.changed],
            "workload_changes": [
                {"key": k, "a": va, "b": vb} for k, va, vb in self.workload_changes
            ],
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
        }


def _verdict(figure: Figure, diff: Interval, base: float, min_effect_pct: float) -> str:
    """faster / slower only when the interval excludes zero, the change is not negligible and
    the percentile has enough requests beyond it to trust the interval."""
    if not diff.reliable:
        return "too few requests"
    if not diff.excludes_zero() or abs(100 * diff.estimate / base) < min_effect_pct:
        return "no difference"
    worse = diff.estimate < 0 if figure.higher_is_better else diff.estimate > 0
    return "slower" if worse else "faster"


def _regressed(figure: Figure, diff: Interval, base: float, limit_pct: float | None) -> bool:
    """Worse by more than ``limit_pct`` even at the interval's most favourable end."""
    if limit_pct is None or not base or not diff.reliable:
        return False
    best_case = diff.high if figure.higher_is_better else diff.low
    change = 100 * best_case / base
    return change < -limit_pct if figure.higher_is_better else change > limit_pct


def _row(
    a: LevelSamples, b: LevelSamples, figure: Figure, settings: dict[str, Any], seed: int
) -> Row:
    sa, sb = a.sample(figure), b.sample(figure)
    if sa.n == 0 or sb.n == 0:
        return Row(level=a.label, figure=figure, a=None, b=None, diff=None, verdict="not measured")
    diff = difference(
        sa,
        sb,
        figure.stat,
        confidence=settings["confidence"],
        resamples=settings["resamples"],
        seed=seed,
    )
    base = estimate(sa, figure.stat)
    return Row(
        level=a.label,
        figure=figure,
        a=base,
        b=estimate(sb, figure.stat),
        diff=diff,
        verdict=_verdict(figure, diff, base, settings["min_effect_pct"]),
        regression=_regressed(figure, diff, base, settings["fail_on_regression_pct"]),
    )


def _check_comparable(a: Run, b: Run, allow_different_workloads: bool) -> list[Any]:
    for run, which in ((a, "A"), (b, "B")):
        if run.kind != "bench":
            raise ConfigError(
                f"{which} ({run.where}) is a {run.kind} run: compare takes bench runs "
                "(an optimize run's own table compares its recipes)"
            )
    changes = workload_diff(a.result, b.result)
    if changes and not allow_different_workloads:
        what = "; ".join(f"{k} {va!r} vs {vb!r}" for k, va, vb in changes)
        raise ConfigError(
            f"A and B measured different workloads ({what}): their figures are not comparable; "
            "--allow-different-workloads compares them anyway"
        )
    return changes


def compare_runs(
    a: Run,
    b: Run,
    figures: list[Figure],
    *,
    confidence: float = 0.95,
    resamples: int = 4000,
    min_effect_pct: float = 3.0,
    fail_on_regression_pct: float | None = None,
    allow_different_workloads: bool = False,
    seed: int = 0,
) -> Comparison:
    """Compare B against A at every load level both measured."""
    if not 0.5 < confidence < 1:
        raise ConfigError("--confidence must be between 0.5 and 1, e.g. 0.95")
    if resamples < 200:
        raise ConfigError("--resamples must be >= 200")
    workload = _check_comparable(a, b, allow_different_workloads)
    la, lb = levels_of(a.result), levels_of(b.result)
    settings = {
        "confidence": confidence,
        "resamples": resamples,
        "min_effect_pct": min_effect_pct,
        "fail_on_regression_pct": fail_on_regression_pct,
    }
    rows = []
    for key in (k for k in la if k in lb):
        if not la[key].requests or not lb[key].requests:
            raise ConfigError(
                f"{la[key].label}: a run has no per-request records (written with records "
                "dropped?): compare resamples requests, so it needs them"
            )
        for i, figure in enumerate(figures):
            rows.append(_row(la[key], lb[key], figure, settings, seed + i))
    if not rows:
        raise ConfigError(
            "A and B share no load level (A: "
            + ", ".join(v.label for v in la.values())
            + "; B: "
            + ", ".join(v.label for v in lb.values())
            + "): nothing to compare"
        )
    return Comparison(
        a=a,
        b=b,
        rows=rows,
        confidence=confidence,
        resamples=resamples,
        min_effect_pct=min_effect_pct,
        fail_on_regression_pct=fail_on_regression_pct,
        changed=provenance_diff(a.result, b.result),
        workload_changes=workload,
        only_in_a=[v.label for k, v in la.items() if k not in lb],
        only_in_b=[v.label for k, v in lb.items() if k not in la],
    )
