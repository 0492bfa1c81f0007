"""An ``optimize`` run in the report: each recipe's change against the baseline as bars, its
quality figures and verdict, in the order tried."""

from __future__ import annotations

from html import escape
from typing import Any

from latlab.optimize.seed_claims import seed_cell
from latlab.report.sections import Plot, Section, Table
from latlab.report.svg import Chart, Series, colour
from latlab.runs.store import Run

_FIGURE_NAMES = {"ttft": "TTFT", "itl": "ITL", "throughput": "throughput", "memory": "memory"}
_CLIP_PCT = 150.0  # bars are cut here so a +1,500% trial does not flatten every other bar
_VERDICT_COLOURS = {"adopt": "#009E73", "reject": "#D55E00", "skip": "#888888", "failed": "#C00000"}


def quality_text(quality: dict[str, Any] | None) -> str:
    if not quality:
        return "-"
    parts = []
    logits = quality.get("logits")
    if logits:
        parts.append(
            f"top-1 {logits['top1_agreement']:.3f}, KL {logits['mean_kl']:.1e} "
            f"(p99 {logits['p99_kl']:.1e}), ppl {logits['perplexity_change_pct']:+.2f}%"
        )
    if quality.get("greedy_match_rate") is not None:
        parts.append(f"greedy {100 * quality['greedy_match_rate']:.0f}% same")
    return "; ".join(parts) or "-"


def _change(trial: dict[str, Any], figure: str) -> dict[str, Any]:
    return (trial.get("deltas") or {}).get(figure) or {}


def _bar_cell(d: dict[str, Any], scale: float) -> str:
    """An inline bar of the change: green where better, red where worse, grey within noise."""
    pct = d.get("change_pct")
    if pct is None:
        return "<td>-</td>"
    fill = "#009E73" if d.get("improved") else "#D55E00" if d.get("worsened") else "#AAAAAA"
    half = 60
    length = min(half, abs(pct) / scale * half) if scale else 0  # cut at the scale
    x = half if pct >= 0 else half - length
    mark = "*" if d.get("significant") else ""
    return (
        f'<td class="bar"><svg viewBox="0 0 120 14" width="120" height="14">'
        f'<line x1="60" x2="60" y1="0" y2="14" stroke="#999"/>'
        f'<rect x="{x:.1f}" y="2" width="{max(length, 0.5):.1f}" height="10" fill="{fill}"/>'
        f"</svg> {pct:+.1f}%{mark}</td>"
    )


def _html_table(trials: list[dict[str, Any]], figures: list[str]) -> str:
    scale = min(
        _CLIP_PCT,
        max(
            (abs(_change(t, f).get("change_pct") or 0) for t in trials for f in figures), default=0
        ),
    )
    head = "".join(f"<th>{escape(_FIGURE_NAMES.get(f, f))}</th>" for f in figures)
    rows = []
    for t in trials:
        verdict = t.get("verdict", "")
        cells = "".join(_bar_cell(_change(t, f), scale) for f in figures)
        colour_ = _VERDICT_COLOURS.get(verdict, "#333")
        reason = escape(t.get("reason") or t.get("error") or "")
        rows.append(
            f"<tr><td>{escape(t.get('name', ''))}</td><td>{escape(t.get('level', ''))}"
            f"</td>{cells}<td>{escape(quality_text(t.get('quality')))}</td>"
            f"<td>{escape(seed_cell(t.get('seed_claim')))}</td>"
            f'<td><b style="color:{colour_}">{escape(verdict)}</b> {reason}</td></tr>'
        )
    return (
        f'<table class="strategy"><tr><th>recipe</th><th>level</th>{head}<th>quality</th>'
        f"<th>seed's claim</th><th>verdict</th></tr>{''.join(rows)}</table>"
    )


def strategy_section(run: Run) -> Section:
    result = run.result
    trials = [t for t in result.get("trials") or () if isinstance(t, dict)]
    figures = list((result.get("figures") or _FIGURE_NAMES).keys())
    measured = [
        t for t in trials if any(_change(t, f).get("change_pct") is not None for f in figures)
    ]
    chart = Chart(
        title=f"Change against the baseline per recipe ({run.label})",
        x_label=f"recipe (in the order tried; bars cut at +-{_CLIP_PCT:g}%, the table has all)",
        y_label="% change",
        y_min=None,
        height=320,
    )
    width = 0.8 / max(1, len(figures))
    for j, f in enumerate(figures):
        pts = [
            (float(i), max(-_CLIP_PCT, min(_CLIP_PCT, _change(t, f)["change_pct"])))
            for i, t in enumerate(measured)
            if _change(t, f).get("change_pct") is not None
        ]
        chart.series.append(
            Series(
                name=_FIGURE_NAMES.get(f, f),
                colour=colour(j),
                kind="bars",
                width=width * 0.9,
                dash=str((j - (len(figures) - 1) / 2) * width),
                points=pts,
            )
        )
    chart.x_ticks = [float(i) for i in range(len(measured))]
    chart.x_tick_labels = [str(i + 1) for i in range(len(measured))]
    chart.x_range = (-0.5, len(measured) - 0.5)
    rows = [
        [
            str(i + 1),
            t.get("name", ""),
            *[_pct(_change(t, f)) for f in figures],
            quality_text(t.get("quality")),
            seed_cell(t.get("seed_claim")),
            t.get("verdict", ""),
        ]
        for i, t in enumerate(measured)
    ]
    names = [_FIGURE_NAMES.get(f, f) for f in figures]
    table = Table(
        headers=["#", "recipe", *names, "quality", "seed's claim", "verdict"],
        rows=rows,
    )
    adopted = ", ".join(result.get("adopted") or []) or "nothing"
    return Section(
        title=f"optimize: strategy table ({run.label})",
        intro=f"Model {result.get('model') or 'bundled'}; adopted: {adopted}. Bars: change "
        "against the baseline (lower is better for TTFT, ITL and memory; higher for "
        "throughput); * = beyond the spread of repetitions.",
        plots=[Plot(chart=chart, table=table, slug=f"strategy-{run.label}")] if measured else [],
        html=_html_table(trials, figures),
    )


def _pct(d: dict[str, Any]) -> str:
    pct = d.get("change_pct")
    return "-" if pct is None else f"{pct:+.1f}%" + ("*" if d.get("significant") else "")
