"""One load level over time: requests in flight and each request's TTFT by when it was sent,
to show warm-up, drift and queueing. Binned for drawing; the table has the numbers per tenth."""

from __future__ import annotations

import math
from collections.abc import Sequence

from latlab.metrics import RequestRecord, percentile
from latlab.report.levels import LevelView
from latlab.report.sections import Plot, Section, Table, _f
from latlab.report.svg import Chart, Series, colour
from latlab.runs.store import Run

_BINS = 120
_MAX_POINTS = 1500


def _in_flight(records: list[RequestRecord], t0: int, span: int) -> list[tuple[float, float]]:
    """Peak requests in flight per time bin (seconds from the level's start)."""
    events = sorted(
        [(r.send_ns, 1) for r in records]
        + [(r.end_ns, -1) for r in records if r.end_ns is not None]
    )
    peaks, level, i = [], 0, 0
    for b in range(_BINS):
        bin_end = t0 + span * (b + 1) // _BINS
        peak = level  # what was in flight when the bin opened
        while i < len(events) and (events[i][0] < bin_end or b == _BINS - 1):
            level += events[i][1]
            peak = max(peak, level)
            i += 1
        peaks.append(peak)
    return [(b * span / _BINS / 1e9, float(p)) for b, p in enumerate(peaks)]


def _ttft_points(records: list[RequestRecord], t0: int) -> list[tuple[float, float]]:
    pts = [
        ((r.origin_ns - t0) / 1e9, r.ttft_ns / 1e6)
        for r in records
        if r.ok and r.ttft_ns is not None
    ]
    stride = max(1, math.ceil(len(pts) / _MAX_POINTS))
    return pts[::stride]


def _deciles(records: list[RequestRecord], t0: int, span: int) -> list[list[str]]:
    rows = []
    for d in range(10):
        lo, hi = t0 + span * d // 10, t0 + span * (d + 1) // 10
        inside = [r for r in records if lo <= r.origin_ns < hi or (d == 9 and r.origin_ns == hi)]
        ttfts = sorted(r.ttft_ns / 1e6 for r in inside if r.ok and r.ttft_ns is not None)
        rows.append(
            [
                f"{(lo - t0) / 1e9:.1f}-{(hi - t0) / 1e9:.1f}",
                str(len(inside)),
                _f(percentile(ttfts, 50) if ttfts else None),
                _f(percentile(ttfts, 99) if ttfts else None),
                str(sum(1 for r in inside if not r.ok)),
            ]
        )
    return rows


def pick_level(views: list[list[LevelView]], wanted: str | None) -> str | None:
    """The level to draw over time: the one asked for, else the first run's highest load."""
    labels = [v.label for vs in views for v in vs]
    if wanted is not None:
        return wanted if wanted in labels else None
    first = [v for v in views[0] if v.timeline] if views else []
    if not first:
        return None
    return max(first, key=lambda v: v.x if v.x is not None else math.inf).label


def _draw_run(
    name: str, hue: str, recs: list[RequestRecord], flight: Chart, ttft: Chart
) -> tuple[list[str], list[list[str]]]:
    """One run's level onto both charts; its in-flight row and its TTFT rows per tenth."""
    t0 = min(r.origin_ns for r in recs)
    span = max(1, max((r.end_ns or r.origin_ns) for r in recs) - t0)
    steps = _in_flight(recs, t0, span)
    flight.series.append(Series(name=name, colour=hue, kind="step", points=steps))
    ttft.series.append(Series(name=name, colour=hue, kind="points", points=_ttft_points(recs, t0)))
    mean = sum(p for _, p in steps) / len(steps)
    peak = max(p for _, p in steps)
    row = [name, f"{span / 1e9:.2f}", str(len(recs)), f"{peak:.0f}", f"{mean:.1f}"]
    return row, [[name, *d] for d in _deciles(recs, t0, span)]


def timeline_section(
    runs: Sequence[Run], views: list[list[LevelView]], wanted: str | None = None
) -> Section | None:
    label = pick_level(views, wanted)
    if label is None:
        return None
    flight = Chart(
        title=f"Requests in flight, {label}",
        x_label="seconds into the level",
        y_label="in flight (peak per bin)",
    )
    ttft = Chart(
        title=f"TTFT by send time, {label}", x_label="seconds into the level", y_label="TTFT (ms)"
    )
    flight_rows, ttft_rows = [], []
    for i, (run, vs) in enumerate(zip(runs, views, strict=True)):
        view = next((v for v in vs if v.label == label and v.timeline), None)
        if view is not None:
            flight_row, deciles = _draw_run(run.label, colour(i), view.timeline, flight, ttft)
            flight_rows.append(flight_row)
            ttft_rows += deciles
    if not flight.series:
        return None
    return Section(
        title=f"Timeline of one level: {label}",
        intro="Warm-up shows at the start, drift as a slope, queueing as TTFT that grows with "
        "the requests in flight. The first repeat of the level is drawn; the table splits it "
        "into tenths by send time.",
        plots=[
            Plot(
                chart=flight,
                slug="timeline-in-flight",
                table=Table(
                    headers=["run", "seconds", "requests", "peak in flight", "mean of bin peaks"],
                    rows=flight_rows,
                ),
            ),
            Plot(
                chart=ttft,
                slug="timeline-ttft",
                table=Table(
                    headers=["run", "seconds", "sent", "TTFT p50", "TTFT p99", "failed"],
                    rows=ttft_rows,
                ),
            ),
        ],
    )
