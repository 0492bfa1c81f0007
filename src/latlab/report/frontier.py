"""A ``bench --find`` run in the report: each probe's percentile with its interval against the
SLO, the answer marked; the frontier table beneath."""

from __future__ import annotations

from typing import Any

from latlab.report.sections import Plot, Section, Table
from latlab.report.svg import Chart, RefLine, Series, colour, dash, load_axis
from latlab.runs.store import Run

_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E"}


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def frontier_section(run: Run) -> Section | None:
    cap = run.result.get("capacity")
    if not isinstance(cap, dict) or not cap.get("probes"):
        return None
    probes = sorted(cap["probes"], key=lambda p: p["value"])
    q = f"p{cap['percentile']:g}"
    unit = "concurrent users" if cap["variable"] == "concurrency" else "requests/s"
    goodput = cap.get("goodput_rps_at_answer")
    intro = (
        f"Status {cap['status']}; answer {_answer(cap)} {unit}"
        + ("" if goodput is None else f", goodput there {goodput:,.2f} req/s")
        + f"; thin dashed lines: the {cap['confidence']:.0%} interval of each probe's "
        f"{q}; probes in the order run: " + ", ".join(f"{p['value']:g}" for p in cap["probes"])
    )
    plot = Plot(
        chart=_frontier_chart(run, cap, probes, q, unit),
        table=_frontier_table(cap, probes, q),
        slug=f"frontier-{run.label}",
    )
    return Section(title=f"Capacity search ({run.label})", intro=intro, plots=[plot])


def _answer(cap: dict[str, Any]) -> str:
    return "none" if cap.get("answer") is None else f"{cap['answer']:g}"


def _frontier_chart(
    run: Run, cap: dict[str, Any], probes: list[dict[str, Any]], q: str, unit: str
) -> Chart:
    """Each objective's percentile per probe with its interval, the SLO and the answer."""
    xs = [float(p["value"]) for p in probes]
    chart = Chart(
        title=f"Capacity frontier ({run.label}): {q} against load",
        x_label=unit,
        y_label=f"{q} (ms)",
        **load_axis(xs),  # type: ignore[arg-type]
    )
    for i, (figure, limit) in enumerate(cap["objectives_ms"].items()):
        name = _NAMES.get(figure, figure)
        rows = [(float(p["value"]), p["intervals"].get(figure)) for p in probes]
        rows = [(x, iv) for x, iv in rows if iv]
        chart.series.append(
            Series(
                name=f"{name} {q}", colour=colour(i), points=[(x, iv["estimate"]) for x, iv in rows]
            )
        )
        for bound in ("low", "high"):
            chart.series.append(
                Series(
                    name=f"_{name} {bound}",
                    colour=colour(i),
                    dash=dash(2),
                    width=1.0,
                    points=[(x, iv[bound]) for x, iv in rows],
                )
            )
        chart.refs.append(RefLine(value=float(limit), label=f"SLO {name} {limit:g} ms"))
    if cap.get("answer") is not None:
        chart.refs.append(
            RefLine(
                value=float(cap["answer"]),
                axis="x",
                colour="#009E73",
                label=f"answer {cap['answer']:g}",
            )
        )
    return chart


def _frontier_table(cap: dict[str, Any], probes: list[dict[str, Any]], q: str) -> Table:
    """One row per probe: load, requests, each percentile with its interval, verdict, rates."""
    headers = [
        cap["variable"],
        "requests",
        *[f"{_NAMES.get(k, k)} {q} [CI]" for k in cap["objectives_ms"]],
        "verdict",
        "req/s",
        "tok/s",
        "goodput",
    ]
    table_rows = []
    for p in probes:
        cis = [
            f"{_f(iv['estimate'])} [{_f(iv['low'])}, {_f(iv['high'])}]"
            if (iv := p["intervals"].get(k))
            else "-"
            for k in cap["objectives_ms"]
        ]
        table_rows.append(
            [
                f"{p['value']:g}",
                str(p["requests"]),
                *cis,
                p["verdict"],
                _f(p["requests_per_s"], 2),
                _f(p["tokens_per_s"]),
                _f(p.get("goodput_rps"), 2),
            ]
        )
    return Table(headers=headers, rows=table_rows)
