"""``latlab compare``'s console output: the difference table, then what changed and why not."""

from __future__ import annotations

from typing import Any

from latlab.compare.compare import Comparison, Row

_COLOURS = {"faster": "green", "slower": "red", "no difference": "dim"}
_MAX_CHANGES = 25


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    digits = 2 if abs(value) < 10 else 1
    return f"{value:+,.{digits}f}" if signed else f"{value:,.{digits}f}"


def _cells(row: Row) -> list[str]:
    f, d = row.figure, row.diff
    if d is None:
        return [row.level, f"{f.label} ({f.unit})", "-", "-", "-", "-", row.verdict, ""]
    diff = f"{_num(d.estimate, True)} [{_num(d.low, True)}, {_num(d.high, True)}]"
    change = "-"
    if row.a:
        lo, hi = 100 * d.low / row.a, 100 * d.high / row.a
        change = f"{row.change_pct:+.1f}% [{lo:+.1f}, {hi:+.1f}]"
    colour = _COLOURS.get(row.verdict)
    verdict = f"[{colour}]{row.verdict}[/]" if colour else row.verdict
    verdict += " [bold red]REGRESSION[/]" if row.regression else ""
    return [
        row.level,
        f"{f.label} ({f.unit})",
        _num(row.a),
        _num(row.b),
        diff,
        change,
        verdict,
        d.method,
    ]


def comparison_table(cmp: Comparison) -> Any:
    from rich.table import Table

    title = f"compare A = {cmp.a.label} ({cmp.a.where}) -> B = {cmp.b.label} ({cmp.b.where})"
    t = Table(title=title, title_justify="left")
    for col in (
        "load",
        "figure",
        "A",
        "B",
        f"B - A [{cmp.confidence:.0%} CI]",
        "change",
        "verdict",
        "CI",
    ):
        t.add_column(col, justify="left" if col in ("load", "figure", "verdict", "CI") else "right")
    for row in cmp.rows:
        t.add_row(*_cells(row))
    t.caption = (
        f"bootstrap over requests ({cmp.resamples} resamples; repeats resampled first); "
        f"faster/slower: the interval excludes 0 and the change is >= "
        f"{cmp.min_effect_pct:g}%"
    )
    return t


def _short(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def notes(cmp: Comparison) -> list[str]:
    out = []
    for label, levels in (("only in A", cmp.only_in_a), ("only in B", cmp.only_in_b)):
        if levels:
            out.append(f"[yellow]not compared ({label}): {', '.join(levels)}[/]")
    if cmp.workload_changes:
        what = "; ".join(f"{k} {va!r} -> {vb!r}" for k, va, vb in cmp.workload_changes)
        out.append(f"[yellow]different workloads, compared anyway: {what}[/]")
    seen = set()
    for row in cmp.rows:
        if row.diff is not None and row.diff.note and row.diff.note not in seen:
            seen.add(row.diff.note)
            out.append(f"{row.level} {row.figure.label}: {row.diff.note}")
    if cmp.changed:
        out.append("[bold]what changed between A and B:[/]")
        for key, va, vb in cmp.changed[:_MAX_CHANGES]:
            out.append(f"  {key}: {_short(va)} -> {_short(vb)}")
        if len(cmp.changed) > _MAX_CHANGES:
            out.append(f"  ... {len(cmp.changed) - _MAX_CHANGES} more (--json lists all)")
    else:
        out.append("same target, settings, workload and environment")
    if cmp.fail_on_regression_pct is not None:
        bad = cmp.regressions
        out.append(
            f"[bold red]{len(bad)} regression(s) beyond {cmp.fail_on_regression_pct:g}% "
            "with the interval's best case[/]"
            if bad
            else f"no regression beyond {cmp.fail_on_regression_pct:g}%"
        )
    return out
