"""Render a dashboard's panels from a live Prometheus into one self-contained HTML page.

For a look without Grafana (and for the docs' screenshot): each panel's queries run as range
queries over the last ``range_s`` seconds and are drawn as inline SVG lines. No script, no
network fetch when the page is opened.
"""

from __future__ import annotations

import html
import math
import time

from latlab.monitor.dashboard import Dashboard, Panel, concrete
from latlab.monitor.promapi import PrometheusAPI

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
_W, _H, _PAD = 440, 170, 34


def render_preview(board: Dashboard, prometheus_url: str, *, range_s: float = 900.0) -> str:
    api = PrometheusAPI(prometheus_url)
    end = time.time()
    start, step = end - range_s, max(1.0, range_s / 240)
    rate_interval = f"{max(4 * int(step), 20)}s"
    cards = []
    try:
        for panel in board.panels:
            series = _panel_series(api, panel, start, end, step, rate_interval)
            cards.append(_card(panel, series, start, end))
    finally:
        api.close()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!doctype html><meta charset='utf-8'><title>" + html.escape(board.title) + "</title>"
        "<style>body{font:13px sans-serif;margin:16px;background:#fafafa}"
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:12px}"
        ".card{background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px}"
        "h1{font-size:18px}h2{font-size:13px;margin:0 0 4px}.legend span{margin-right:10px}"
        ".empty{color:#999;height:170px;display:flex;align-items:center;justify-content:center}"
        "</style>"
        f"<h1>{html.escape(board.title)}</h1><p>Rendered from {html.escape(prometheus_url)} at "
        f"{stamp}, last {range_s / 60:g} min, by latlab dashboard --preview.</p>"
        "<div class='grid'>" + "".join(cards) + "</div>"
    )


def _panel_series(api: PrometheusAPI, panel: Panel, start: float, end: float, step: float,
                  rate_interval: str) -> list[tuple[str, list[tuple[float, float]]]]:  # fmt: skip
    out = []
    for query in panel.queries:
        expr = concrete(query.expr, rate_interval=rate_interval)
        for result in api.query_range(expr, start, end, step):
            points = [(float(t), float(v)) for t, v in result["values"]]
            points = [(t, v) for t, v in points if math.isfinite(v)]
            if points:
                out.append((_legend(query.legend, result.get("metric", {})), points))
    return out


def _legend(template: str, labels: dict[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _card(panel: Panel, series: list, start: float, end: float) -> str:
    title = f"<h2>{html.escape(panel.title)}</h2>"
    if not series:
        return f"<div class='card'>{title}<div class='empty'>no data</div></div>"
    values = [v for _, pts in series for _, v in pts]
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi if hi > lo else lo + 1.0
    lines, legend = [], []
    for i, (name, pts) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        xy = " ".join(f"{_x(t, start, end):.1f},{_y(v, lo, hi):.1f}" for t, v in pts)
        lines.append(f"<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{xy}'/>")
        legend.append(f"<span style='color:{color}'>&#9632; {html.escape(name)}</span>")
    axis = (
        f"<line x1='{_PAD}' y1='{_H - 14}' x2='{_W}' y2='{_H - 14}' stroke='#bbb'/>"
        f"<text x='0' y='12' font-size='10'>{_fmt(hi, panel.unit)}</text>"
        f"<text x='0' y='{_H - 16}' font-size='10'>{_fmt(lo, panel.unit)}</text>"
    )
    svg = f"<svg width='{_W}' height='{_H}' viewBox='0 0 {_W} {_H}'>{axis}{''.join(lines)}</svg>"
    return f"<div class='card'>{title}{svg}<div class='legend'>{''.join(legend)}</div></div>"


def _x(t: float, start: float, end: float) -> float:
    return _PAD + (t - start) / max(end - start, 1e-9) * (_W - _PAD - 4)


def _y(v: float, lo: float, hi: float) -> float:
    return 6 + (1 - (v - lo) / (hi - lo)) * (_H - 26)


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.3g} ms"
    if unit == "percentunit":
        return f"{value:.1%}"
    return f"{value:.3g}"
