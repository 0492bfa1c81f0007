"""The seed's strategy table (``LATENCY_OPTIMIZATION_STRATEGIES``), set beside what was measured.

The seed claims, per technique, a TTFT cut, a speed-up or a memory cut and a quality impact.
Each claim is written here once, as the range it states, with the recipe that measures it on
this machine and how the recipe's change maps onto the claim's figure:

- a *percent* claim ("TTFT -30-50%") is compared with the change of the recipe's figure;
- a *factor* claim ("2-3x throughput") with candidate / baseline (or baseline / candidate for
  times, where lower is better);
- ``inverted`` rows measure the opposite switch (the ``static-batching`` recipe turns
  continuous batching *off*; ``attention-eager`` turns the fused attention kernel off), so
  the claimed gain is the baseline over the candidate.

The verdict says whether the measurement reached the claimed range: ``beyond``, ``within``,
``short`` (a gain, smaller than claimed), ``none`` (no gain beyond the spread of repetitions)
or ``not measured`` (the recipe was skipped, with its reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(kw_only=True, slots=True, frozen=True)
class SeedClaim:
    """One claim of the seed's table, as a range of gains on one figure."""

    row: str  # the seed's technique
    figure: str  # ttft | itl | throughput | memory (the lab's figure names)
    unit: str  # "pct" (a cut, in %) or "x" (a factor)
    low: float  # the claimed gain: a cut of low..high % or a factor of low..high
    high: float
    quality: str  # the seed's quality impact
    text: str  # the claim as the seed states it
    inverted: bool = False  # the recipe switches the technique off (gain = baseline/candidate)
    note: str = ""  # how the recipe differs from the seed's row

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "claim": self.text, "quality": self.quality, "note": self.note}


def _claim(row: str, figure: str, unit: str, low: float, high: float, quality: str, text: str,
           **extra: Any) -> SeedClaim:  # fmt: skip
    return SeedClaim(row=row, figure=figure, unit=unit, low=low, high=high, quality=quality,
                     text=text, **extra)  # fmt: skip


_INT4 = _claim("INT4 quantization", "ttft", "pct", 30, 50, "low", "TTFT -30-50%, quality low")
_DISTILL = _claim("distillation", "ttft", "pct", 50, 70, "medium", "TTFT -50-70%, quality medium")
_PRUNE = _claim("pruning", "ttft", "pct", 20, 40, "low", "TTFT -20-40%, quality low")

# recipe name -> the seed's claim it measures
CLAIMS: dict[str, SeedClaim] = {
    "int4-weight-only": _INT4,
    "int8-weight-only": _claim(
        "INT4 quantization",
        "ttft",
        "pct",
        30,
        50,
        "low",
        _INT4.text,
        note="int8 weights: INT4 kernels need CUDA or mslk",
    ),
    "int8-dynamic-activation": _claim(
        "INT4 quantization",
        "ttft",
        "pct",
        30,
        50,
        "low",
        _INT4.text,
        note="int8 weights and activations",
    ),
    "distill": _DISTILL,
    "prune-layers": _PRUNE,
    "prune-width": _PRUNE,
    "sparsity-2-4": _claim(
        "pruning",
        "ttft",
        "pct",
        20,
        40,
        "low",
        _PRUNE.text,
        note="2:4 semi-structured sparsity (CUDA only)",
    ),
    "static-batching": _claim(
        "continuous batching",
        "throughput",
        "x",
        2,
        3,
        "none",
        "throughput 2-3x",
        inverted=True,
        note="measured as continuous (baseline) over static batching",
    ),
    "attention-flash": _claim(
        "Flash Attention", "ttft", "x", 1.5, 2, "none", "speed 1.5-2x, memory -20-40%"
    ),
    "attention-eager": _claim(
        "Flash Attention",
        "ttft",
        "x",
        1.5,
        2,
        "none",
        "speed 1.5-2x, memory -20-40%",
        inverted=True,
        note="measured as fused SDPA (baseline) over eager attention",
    ),
    "kv-cache-dtype": _claim(
        "KV cache optimization",
        "memory",
        "pct",
        30,
        50,
        "none",
        "memory -30-50%, speed 1.2-1.5x",
    ),
    "response-cache": _claim(
        "request cache",
        "ttft",
        "pct",
        90,
        100,
        "none",
        "TTFT -90%+ on repeats",
        note="p50 over the whole workload, of which only some requests repeat",
    ),
}


def claim_for(recipe_name: str) -> SeedClaim | None:
    """The seed's claim a recipe measures; names with options (``kv-cache-bfloat16``,
    ``prune-layers-2``, ``distill-2``) too."""
    for family in ("kv-cache-dtype", "prune-layers", "distill"):
        if recipe_name.startswith(family.removesuffix("-dtype") + "-"):
            return CLAIMS[family]
    return CLAIMS.get(recipe_name)


def measured_gain(claim: SeedClaim, delta: dict[str, Any]) -> float | None:
    """The measured change in the claim's unit (a cut in %, or a factor), or None."""
    base, cand = delta.get("baseline"), delta.get("candidate")
    if base is None or cand is None or base <= 0 or cand <= 0:
        return None
    if claim.inverted:
        base, cand = cand, base
    lower_is_better = claim.figure != "throughput"
    if claim.unit == "x":
        return base / cand if lower_is_better else cand / base
    change = 100.0 * (cand / base - 1.0)
    return -change if lower_is_better else change


def judge(claim: SeedClaim, gain: float | None, significant: bool) -> str:
    """beyond | within | short | none: where the measured gain falls against the claim."""
    if gain is None:
        return "not measured"
    no_gain = gain <= (1.0 if claim.unit == "x" else 0.0)
    if no_gain or not significant:
        return "none"
    if gain < claim.low:
        return "short"
    return "beyond" if gain > claim.high else "within"


def format_gain(claim: SeedClaim, gain: float) -> str:
    if claim.unit == "x":
        return f"{gain:.2f}x"
    return f"{-gain:+.0f}%" if claim.figure != "throughput" else f"{gain:+.0f}%"


def seed_column(name: str, verdict: str, deltas: dict[str, Any]) -> dict[str, Any] | None:
    """The seed's claim for a trial, the measured figure in the claim's unit and the verdict.

    ``deltas`` are the trial's per-figure changes as in result.json (baseline, candidate,
    significant); a skipped or failed trial gets ``not measured``.
    """
    claim = claim_for(name)
    if claim is None:
        return None
    delta = deltas.get(claim.figure) or {}
    gain = measured_gain(claim, delta) if verdict in ("adopt", "reject") else None
    return {
        **claim.to_dict(),
        "figure": claim.figure,
        "measured": None if gain is None else round(gain, 4),
        "measured_text": "-" if gain is None else format_gain(claim, gain),
        "verdict": judge(claim, gain, bool(delta.get("significant"))),
    }


def seed_cell(column: dict[str, Any] | None) -> str:
    """'TTFT -30-50%, quality low -> -12%: short' for the Markdown and HTML tables."""
    if column is None:
        return "-"
    if column["measured"] is None:
        return f"{column['claim']} -> not measured"
    return f"{column['claim']} -> {column['measured_text']}: {column['verdict']}"
