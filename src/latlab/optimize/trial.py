"""The lab's result model: each configuration's figures, each trial's verdict, the whole run.

``decide`` is the verdict rule (docs/optimize.md "How a recipe is judged"): quality first,
then every figure's change against the spread of the repetitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from latlab.optimize.lab_plan import LabPlan
from latlab.optimize.noise import Change, compare
from latlab.optimize.quality import QualityResult

# figure -> (key in a repetition's figures, lower is better)
FIGURES: dict[str, tuple[str, bool]] = {
    "ttft": ("ttft_ms_p50", True),
    "itl": ("itl_ms_p50", True),
    "throughput": ("output_tokens_per_s", False),
    "memory": ("memory_bytes", True),
}


@dataclass(kw_only=True, slots=True)
class Measurement:
    """Figures of each repetition of one configuration."""

    reps: list[dict[str, float]] = field(default_factory=list)
    memory_bytes: int = 0
    memory_what: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def values(self, key: str) -> list[float]:
        if key == "memory_bytes":
            return [float(self.memory_bytes)]
        return [rep[key] for rep in self.reps]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reps": self.reps,
            "memory_bytes": self.memory_bytes,
            "memory_what": self.memory_what,
            "extra": self.extra,
        }


@dataclass(kw_only=True, slots=True)
class Trial:
    """One row of the strategy table."""

    name: str
    level: str
    backend: str
    changes: str
    exact: bool
    verdict: str = "skip"  # adopt | reject | skip | failed
    reason: str = ""
    baseline: Measurement | None = None
    candidate: Measurement | None = None
    deltas: dict[str, Change] = field(default_factory=dict)
    quality: QualityResult | None = None
    error: str | None = None
    elapsed_s: float = 0.0
    # one-off: applying the recipe (training, pruning, quantizing) and the first pass beyond a
    # typical one (compilation on first call)
    setup_s: float = 0.0
    components: list[str] = field(default_factory=list)  # for the combined row

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "backend": self.backend,
            "changes": self.changes,
            "exact": self.exact,
            "verdict": self.verdict,
            "reason": self.reason,
            "error": self.error,
            "elapsed_s": round(self.elapsed_s, 3),
            "setup_s": round(self.setup_s, 3),
            "components": self.components,
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "candidate": None if self.candidate is None else self.candidate.to_dict(),
            "deltas": {
                k: {
                    "baseline": c.baseline,
                    "candidate": c.candidate,
                    # JSON has no infinity: a change from a zero baseline has no percentage.
                    "change_pct": c.change_pct if math.isfinite(c.change_pct) else None,
                    "noise_pct": c.noise_pct,
                    "significant": c.significant,
                    "improved": c.improved,
                    "worsened": c.worsened,
                }
                for k, c in self.deltas.items()
            },
            "quality": None if self.quality is None else self.quality.to_dict(),
        }


@dataclass(kw_only=True, slots=True)
class LabResult:
    model_path: str
    plan: LabPlan
    trials: list[Trial]
    baselines: dict[str, Measurement]
    environment: dict[str, Any]
    started_at: str
    elapsed_s: float
    notes: list[str] = field(default_factory=list)
    quality_text: str | None = None  # the user's file; None = the model's heldout.txt

    @property
    def adopted(self) -> list[Trial]:
        return [t for t in self.trials if t.verdict == "adopt" and not t.components]


def decide(trial: Trial, min_noise_pct: float, objective: str | None = None) -> None:
    """Fill ``trial.deltas`` and its verdict: adopt, or reject with the reason.

    With an ``objective`` (the plan's), only that figure must improve beyond the spread.
    """
    assert trial.baseline is not None and trial.candidate is not None
    for figure, (key, lower) in FIGURES.items():
        trial.deltas[figure] = compare(
            figure,
            trial.baseline.values(key),
            trial.candidate.values(key),
            lower,
            min_noise_pct,
        )
    if trial.quality is not None and not trial.quality.passed:
        trial.verdict, trial.reason = "reject", f"quality: {trial.quality.reason}"
        return
    better = [c for c in trial.deltas.values() if c.improved]
    worse = [c for c in trial.deltas.values() if c.worsened]
    if objective is not None:
        objective_verdict(objective, trial, worse)
    elif worse:
        trial.verdict = "reject"
        trial.reason = "worse: " + ", ".join(_fmt(c) for c in worse)
        if better:
            trial.reason += "; better: " + ", ".join(_fmt(c) for c in better)
    elif not better:
        noise = max(c.noise_pct for k, c in trial.deltas.items() if k != "memory")
        trial.verdict = "reject"
        trial.reason = f"no change beyond the spread of the repetitions (±{noise:.0f}%)"
    else:
        trial.verdict = "adopt"
        trial.reason = ", ".join(_fmt(c) for c in better)


def objective_verdict(objective: str, trial: Trial, worse: list[Change]) -> None:
    """Adopt when the plan's objective improves beyond the spread, whatever else moves
    (cost per token at a fixed hourly price falls exactly when throughput rises)."""
    change = trial.deltas["throughput" if objective == "cost" else objective]
    trade = "; worse (accepted for the objective): " + ", ".join(_fmt(c) for c in worse)
    if change.improved:
        trial.verdict = "adopt"
        trial.reason = f"objective {objective}: {_fmt(change)}" + (trade if worse else "")
    else:
        trial.verdict = "reject"
        trial.reason = f"objective {objective} not improved: {_fmt(change)}"


def _fmt(change: Change) -> str:
    return f"{change.metric} {change.change_pct:+.1f}% (spread ±{change.noise_pct:.0f}%)"
