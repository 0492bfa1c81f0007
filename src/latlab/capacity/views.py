"""How a capacity search reads on the console: the frontier table, then the answer."""

from __future__ import annotations

from typing import Any

from latlab.capacity.search import CapacitySearch

_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E"}


def _value(v: float, variable: str) -> str:
    return f"{int(v)}" if variable == "concurrency" else f"{v:g} req/s"


def frontier_table(search: CapacitySearch) -> Any:
    from rich.table import Table

    spec = search.spec
    q = f"p{spec.percentile:g}"
    t = Table(title=f"capacity search: {spec.variable}, {q} within the SLO", title_justify="left")
    t.add_column(spec.variable, justify="right")
    t.add_column("requests", justify="right")
    for figure, limit in spec.objectives.items():
        t.add_column(
            f"{_NAMES[figure]} {q} [{spec.confidence:.0%} CI] <= {limit:g} ms", justify="right"
        )
    for col in ("verdict", "req/s", "tok/s", "goodput"):
        t.add_column(col, justify="right" if col != "verdict" else "left")
    colours = {"meets": "green", "fails": "red", "undetermined": "yellow"}
    for value in sorted(search.probes):
        p = search.probes[value]
        cells = []
        for figure in spec.objectives:
            iv = p.intervals.get(figure)
            cells.append(
                "-" if iv is None else f"{iv.estimate:,.1f} [{iv.low:,.1f}, {iv.high:,.1f}]"
            )
        goodput = "-" if p.goodput_rps is None else f"{p.goodput_rps:,.2f}"
        t.add_row(
            _value(value, spec.variable),
            f"{len(p.records):,}",
            *cells,
            f"[{colours[p.verdict]}]{p.verdict}[/]",
            f"{p.requests_per_s:,.2f}",
            f"{p.tokens_per_s:,.1f}",
            goodput,
        )
    t.caption = (
        f"probe order: {', '.join(_value(v, spec.variable) for v in search.order)}; "
        "meets = the interval's top within the SLO, fails = its bottom beyond it"
    )
    return t


def answer_lines(search: CapacitySearch) -> list[str]:
    spec, lo, hi = search.spec, search.lo, search.hi
    what = "concurrency" if spec.variable == "concurrency" else "request rate"
    slo = ", ".join(
        f"{_NAMES[k]} p{spec.percentile:g} <= {v:g} ms" for k, v in spec.objectives.items()
    )
    if search.status == "none":
        best = search.best_probe()
        line = f"[red]no {what} tried meets {slo}[/]"
        if best is not None:
            ests = ", ".join(
                f"{_NAMES[k]} {iv.estimate:,.1f} ms" for k, iv in best.intervals.items()
            )
            line += f"; closest: {_value(best.value, spec.variable)} ({ests})"
        return [line]
    if lo is None:
        return [f"[yellow]search {search.status}: no {what} was shown to meet {slo}[/]"]
    probe = search.probes[lo]
    goodput = "" if probe.goodput_rps is None else f", goodput {probe.goodput_rps:,.2f} req/s"
    head = f"max {what} meeting {slo}: [bold]{_value(lo, spec.variable)}[/]"
    if search.status == "found":
        tail = (
            f" (fails at {_value(hi, spec.variable)}; tolerance {spec.tolerance:.0%})" if hi else ""
        )
    elif search.status == "above-limit":
        top = _value(spec.limit, spec.variable)
        tail = f" (still met at --find-max {top}: the real limit is higher)"
    elif search.status == "undetermined":
        at = _value(search.last_probed or lo, spec.variable)
        tail = (
            f" [yellow](undetermined above it: the interval at {at} straddles the SLO even "
            "with more requests)[/]"
        )
    else:
        tail = f" ({search.status})"
    return [
        head + tail + f"; at it {probe.requests_per_s:,.2f} req/s, "
        f"{probe.tokens_per_s:,.1f} tok/s{goodput}"
    ]
