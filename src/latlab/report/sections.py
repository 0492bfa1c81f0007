"""The report's sections: each a titled group of charts, each chart with its numbers beneath.

Runs keep one colour each across every chart (``svg.colour(i)``); percentiles and metrics that
share a chart differ by dash. Big runs are thinned for drawing only (CDFs on a quantile grid,
timelines binned), never for the numbers in the tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from latlab.metrics import percentile
from latlab.report.levels import LATENCY_FIGURES, LevelView, slo_of
from latlab.report.svg import Chart, RefLine, Series, colour, dash, load_axis
from latlab.runs.store import Run

# Quantile grid a CDF is drawn on: fine in the tail, where latency stories are told.
_CDF_GRID = [*range(0, 90), *(90 + i / 4 for i in range(36)), 99.25, 99.5, 99.75, 99.9, 100.0]
_TIMELINE_BINS = 120
_MAX_POINTS = 1500


@dataclass(kw_only=True, slots=True)
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass(kw_only=True, slots=True)
class Plot:
    chart: Chart
    table: Table | None = None
    slug: str = ""  # file name for --format md


@dataclass(kw_only=True, slots=True)
class Section:
    title: str
    intro: str = ""
    plots: list[Plot] = field(default_factory=list)
    columns: int = 1
    html: str = ""  # a section drawn as HTML (the optimize strategy table)
    markdown: str = ""
    notes: list[str] = field(default_factory=list)


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# ------------------------------------------------------------------ distributions


def _cdf_points(values: list[float]) -> list[tuple[float, float]]:
    return [(percentile(values, q), q) for q in _CDF_GRID] if values else []


def cdf_sections(runs: Sequence[Run], views: list[list[LevelView]]) -> list[Section]:
    """One section per figure; one chart per load level, one line per run."""
    labels = list(dict.fromkeys(v.label for vs in views for v in vs))
    out = []
    for key, name in LATENCY_FIGURES.items():
        section = Section(
            title=f"{name} distribution per load level",
            columns=2,
            intro=f"Cumulative share of {'tokens' if key == 'itl' else 'requests'} "
            f"at or below each {name} (ms).",
        )
        for label in labels:
            chart = Chart(
                title=f"{name} CDF, {label}",
                x_label=f"{name} (ms)",
                y_label="% at or below",
                width=480,
                height=260,
            )
            rows = []
            for i, (run, vs) in enumerate(zip(runs, views, strict=True)):
                view = next((v for v in vs if v.label == label), None)
                if view is None or not view.values[key]:
                    continue
                chart.series.append(
                    Series(name=run.label, colour=colour(i), points=_cdf_points(view.values[key]))
                )
                s = view.stats[key]
                rows.append(
                    [
                        run.label,
                        str(s.count),
                        _f(s.p50, 2),
                        _f(s.p90, 2),
                        _f(s.p95, 2),
                        _f(s.p99, 2),
                        _f(s.max, 2),
                    ]
                )
            if chart.series:
                table = Table(headers=["run", "n", "p50", "p90", "p95", "p99", "max"], rows=rows)
                section.plots.append(Plot(chart=chart, table=table, slug=f"cdf-{key}-{label}"))
        if section.plots:
            out.append(section)
    return out


# ------------------------------------------------------------------ latency against load


def _load_axis(views: list[list[LevelView]]) -> tuple[str, list[float]]:
    kinds = [v.load_kind for vs in views for v in vs if v.x is not None]
    kind = max(set(kinds), key=kinds.count) if kinds else "concurrency"
    xs = sorted({v.x for vs in views for v in vs if v.load_kind == kind and v.x is not None})
    return kind, xs


def load_section(runs: Sequence[Run], views: list[list[LevelView]]) -> Section | None:
    kind, xs = _load_axis(views)
    if not xs:
        return None
    unit = "requests/s" if kind == "rate" else "concurrent users"
    section = Section(
        title=f"Latency against load ({kind})",
        columns=1,
        intro="p50 (solid), p90 (dashed) and p99 (dotted) at each load level; "
        "dashed red lines are the runs' SLOs.",
    )
    for key in ("ttft", "tpot", "e2e"):
        name = LATENCY_FIGURES[key]
        chart = Chart(
            title=f"{name} against load", x_label=unit, y_label=f"{name} (ms)", **load_axis(xs)
        )  # type: ignore[arg-type]
        rows = []
        for i, (run, vs) in enumerate(zip(runs, views, strict=True)):
            points = [
                v for v in vs if v.load_kind == kind and v.x is not None and v.stats[key].count
            ]
            for j, q in enumerate(("p50", "p90", "p99")):
                chart.series.append(
                    Series(
                        name=f"{run.label} {q}",
                        colour=colour(i),
                        dash=dash(j),
                        points=[(v.x, getattr(v.stats[key], q)) for v in points],
                    )
                )
            rows += [
                [
                    run.label,
                    v.label,
                    _f(v.stats[key].p50),
                    _f(v.stats[key].p90),
                    _f(v.stats[key].p99),
                ]
                for v in points
            ]
            limit = slo_of(run).get(f"{key}_ms")
            if limit is not None:
                chart.refs.append(RefLine(value=limit, label=f"SLO {run.label} {limit:g} ms"))
        table = Table(headers=["run", "load", "p50", "p90", "p99"], rows=rows)
        section.plots.append(Plot(chart=chart, table=table, slug=f"{key}-vs-load"))
    return section


def throughput_section(runs: Sequence[Run], views: list[list[LevelView]]) -> Section | None:
    chart = Chart(title="Throughput against TTFT", x_label="output tokens/s", y_label="TTFT (ms)")
    rows = []
    for i, (run, vs) in enumerate(zip(runs, views, strict=True)):
        pts = [v for v in vs if v.stats["ttft"].count]
        for j, q in enumerate(("p50", "p99")):
            chart.series.append(
                Series(
                    name=f"{run.label} TTFT {q}",
                    colour=colour(i),
                    dash=dash(2 * j),
                    points=[(v.tokens_per_s, getattr(v.stats["ttft"], q)) for v in pts],
                )
            )
        rows += [
            [
                run.label,
                v.label,
                _f(v.tokens_per_s),
                _f(v.requests_per_s, 2),
                _f(v.stats["ttft"].p50),
                _f(v.stats["ttft"].p99),
                _f(v.stats["tpot"].p50, 2),
            ]
            for v in pts
        ]
    if not rows:
        return None
    table = Table(
        headers=["run", "load", "tok/s", "req/s", "TTFT p50", "TTFT p99", "TPOT p50"], rows=rows
    )
    return Section(
        title="Throughput against latency",
        intro="Each point is a load level: how much latency each extra token per second costs.",
        plots=[Plot(chart=chart, table=table, slug="throughput-vs-ttft")],
    )


def _grouped_bars(
    chart: Chart, groups: list[str], runs: Sequence[Run], values: list[list[float | None]]
) -> None:
    """Bars for ``values[run][group]`` side by side at x = group index."""
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        offset = (i - (len(runs) - 1) / 2) * width
        pts = [(float(g), v) for g, v in enumerate(values[i]) if v is not None]
        chart.series.append(
            Series(
                name=run.label,
                colour=colour(i),
                kind="bars",
                width=width * 0.92,
                dash=str(offset),
                points=pts,
            )
        )
    chart.x_ticks = [float(g) for g in range(len(groups))]
    chart.x_tick_labels = groups
    chart.x_range = (-0.5, len(groups) - 0.5)


def goodput_section(runs: Sequence[Run], views: list[list[LevelView]]) -> Section | None:
    if not any(v.goodput_rps is not None for vs in views for v in vs):
        return Section(
            title="Goodput per load level",
            notes=["No SLO was given: goodput needs `latlab bench --slo-ttft-ms/--slo-tpot-ms`."],
        )
    labels = list(dict.fromkeys(v.label for vs in views for v in vs))
    by = [{v.label: v for v in vs} for vs in views]
    values = [[(b[g].goodput_rps if g in b else None) for g in labels] for b in by]
    chart = Chart(title="Goodput per load level", x_label="load level", y_label="good requests/s")
    _grouped_bars(chart, labels, runs, values)
    rows = []
    for run, b in zip(runs, by, strict=True):
        for g in labels:
            if g in b and b[g].goodput_rps is not None:
                v = b[g]
                share = 100 * v.goodput_rps / v.requests_per_s if v.requests_per_s else None
                rows.append(
                    [
                        run.label,
                        g,
                        _f(v.goodput_rps, 2),
                        _f(v.requests_per_s, 2),
                        _f(share) + "%",
                        str(v.failed),
                    ]
                )
    slos = "; ".join(
        f"{r.label}: " + ", ".join(f"{k} {v:g}" for k, v in slo_of(r).items())
        for r in runs
        if slo_of(r)
    )
    table = Table(headers=["run", "load", "goodput req/s", "req/s", "good", "failed"], rows=rows)
    return Section(
        title="Goodput per load level",
        intro=f"Requests per second that met every objective ({slos}); failures count as not good.",
        plots=[Plot(chart=chart, table=table, slug="goodput")],
    )


def chunk_section(runs: Sequence[Run], views: list[list[LevelView]]) -> Section | None:
    totals = [sum((v.tokens_per_chunk for v in vs), start=Counter()) for vs in views]
    sizes = sorted({k for t in totals for k in t})
    if not sizes:
        return None
    shares = [[100 * t[k] / sum(t.values()) if t else None for k in sizes] for t in totals]
    chart = Chart(
        title="Tokens per streamed chunk", x_label="tokens in a chunk", y_label="% of chunks"
    )
    _grouped_bars(chart, [str(k) for k in sizes], runs, shares)
    rows = [
        [run.label, str(k), str(t[k]), _f(s[j])]
        for run, t, s in zip(runs, totals, shares, strict=True)
        for j, k in enumerate(sizes)
        if t[k]
    ]
    table = Table(headers=["run", "tokens per chunk", "chunks", "% of chunks"], rows=rows)
    return Section(
        title="Tokens per chunk",
        intro="A server that batches tokens into chunks "
        "hides inter-token latency: ITL divides each gap among the chunk's tokens.",
        plots=[Plot(chart=chart, table=table, slug="tokens-per-chunk")],
    )
