"""The figures ``compare`` and ``--repeats`` estimate, by name: ``ttft_p99``, ``tpot_mean``,
``throughput``... Each says what it is computed from and which direction is better."""

from __future__ import annotations

from dataclasses import dataclass

from latlab.bootstrap import Statistic
from latlab.errors import ConfigError

# per-request figures: name -> (RequestRecord property, label)
PER_REQUEST = {
    "ttft": ("ttft_ns", "TTFT"),
    "tpot": ("tpot_ns", "TPOT"),
    "e2e": ("e2e_ns", "E2E"),
    "queue": ("queue_ns", "client queue"),
}
# rates over time bins: name -> (label, unit)
RATES = {
    "throughput": ("throughput", "tok/s"),
    "request_rate": ("requests", "req/s"),
    "goodput": ("goodput", "req/s"),
}
DEFAULT_FIGURES = ("ttft_p50", "ttft_p99", "tpot_p50", "throughput")
_QUANTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}


@dataclass(kw_only=True, slots=True, frozen=True)
class Figure:
    name: str  # as the user wrote it: ttft_p99
    source: str  # per-request property (ttft_ns) or rate name (throughput)
    stat: Statistic
    label: str  # TTFT p99
    unit: str  # ms, tok/s, req/s
    higher_is_better: bool

    @property
    def is_rate(self) -> bool:
        return self.stat.kind == "rate"


def parse_figure(name: str) -> Figure:
    """``ttft_p99`` / ``e2e_mean`` / ``throughput`` -> Figure; a clear error otherwise."""
    key = name.strip().lower()
    if key in RATES:
        label, unit = RATES[key]
        return Figure(
            name=key,
            source=key,
            stat=Statistic(kind="rate"),
            label=label,
            unit=unit,
            higher_is_better=True,
        )
    base, _, q = key.partition("_")
    if base == "itl":
        raise ConfigError(
            "itl is per token, not per request, so requests cannot be resampled for it: "
            "compare tpot_* (each request's mean time per output token) instead"
        )
    if base in PER_REQUEST and (q == "mean" or q in _QUANTILES):
        source, label = PER_REQUEST[base]
        stat = (
            Statistic(kind="mean") if q == "mean" else Statistic(kind="percentile", q=_QUANTILES[q])
        )
        return Figure(
            name=key,
            source=source,
            stat=stat,
            label=f"{label} {q}",
            unit="ms",
            higher_is_better=False,
        )
    known = ", ".join([f"{b}_{{p50,p90,p95,p99,p99.9,mean}}" for b in PER_REQUEST] + list(RATES))
    raise ConfigError(f"unknown figure {name!r}; known: {known}")


def parse_figures(text: str | None) -> list[Figure]:
    names = [n for n in (text or ",".join(DEFAULT_FIGURES)).split(",") if n.strip()]
    if not names:
        raise ConfigError("--metric needs at least one figure, e.g. ttft_p50,throughput")
    return [parse_figure(n) for n in names]
