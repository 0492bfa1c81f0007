"""Per-request samples of one load level of a result JSON, ready to be resampled.

Levels are grouped by their load (``{"concurrency": 4}``), so the repeats a ``--repeats`` run
made of a level become the blocks of one :class:`~latlab.bootstrap.Sample`. Rates are counted in
equal time bins over each repeat's window (first intended send to last byte), so the mean of
the bins is exactly the level's tokens (or requests) per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from latlab.bootstrap import Sample
from latlab.compare.figures import Figure
from latlab.errors import ConfigError
from latlab.metrics import SLO, RequestRecord
from latlab.runs.describe import load_label

_NS_PER_MS = 1_000_000


def load_key(load: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A level's identity: its load without the repeat number."""
    return tuple(sorted((k, v) for k, v in load.items() if k != "repeat"))


@dataclass(kw_only=True, slots=True)
class LevelSamples:
    """All repeats of one load level: their records, and the SLO they were measured with."""

    load: dict[str, Any]
    repeats: list[list[RequestRecord]] = field(default_factory=list)
    slo: SLO | None = None

    @property
    def label(self) -> str:
        return load_label(self.load)

    @property
    def requests(self) -> int:
        return sum(len(r) for r in self.repeats)

    def sample(self, figure: Figure) -> Sample:
        if figure.is_rate:
            return Sample(
                blocks=[_bins(recs, figure.source, self.slo) for recs in self.repeats], ordered=True
            )
        blocks = [
            [v / _NS_PER_MS for r in recs if r.ok and (v := getattr(r, figure.source)) is not None]
            for recs in self.repeats
        ]
        return Sample(blocks=blocks)


def _bin_count(records: list[RequestRecord]) -> int:
    return max(8, min(60, len(records) // 5))


def _bins(records: list[RequestRecord], source: str, slo: SLO | None) -> list[float]:
    """Per-bin rates (per second) of tokens, completions or good completions."""
    if source == "goodput" and slo is None:
        raise ConfigError("goodput needs an SLO: measure with --slo-ttft-ms/--slo-tpot-ms")
    starts = [r.origin_ns for r in records]
    ends = [r.end_ns for r in records if r.end_ns is not None]
    if not starts or not ends or max(ends) <= min(starts):
        return []
    t0, span = min(starts), max(ends) - min(starts)
    count = _bin_count(records)
    width_s = span / count / 1e9
    counts = [0.0] * count

    def add(t_ns: int, amount: float) -> None:
        counts[min(count - 1, (t_ns - t0) * count // span)] += amount

    for rec in records:
        if not rec.ok or rec.end_ns is None:
            continue
        if source == "throughput":
            carried = sum(rec.chunk_tokens)
            scale = rec.num_output_tokens / carried if carried else 0.0
            for t, k in zip(rec.chunk_ns, rec.chunk_tokens, strict=False):
                add(t, k * scale)
        elif source == "request_rate" or (slo is not None and slo.met_by(rec)):
            add(rec.end_ns, 1.0)
    return [c / width_s for c in counts]


def _slo_of(config: dict[str, Any]) -> SLO | None:
    slo = config.get("slo")
    if not isinstance(slo, dict) or not any(v is not None for v in slo.values()):
        return None
    return SLO(slo.get("ttft_ms"), slo.get("tpot_ms"), slo.get("e2e_ms"))


def levels_of(result: dict[str, Any]) -> dict[tuple[tuple[str, Any], ...], LevelSamples]:
    """The result's levels by load, repeats gathered; records rebuilt as RequestRecords."""
    slo = _slo_of(result.get("config") or {})
    out: dict[tuple[tuple[str, Any], ...], LevelSamples] = {}
    for level in result.get("levels") or ():
        load = dict(level.get("load") or {})
        key = load_key(load)
        load.pop("repeat", None)
        entry = out.setdefault(key, LevelSamples(load=load, slo=slo))
        records = [RequestRecord.from_dict(r) for r in level.get("records") or ()]
        entry.repeats.append(records)
    return out
