"""A small SVG chart writer: lines, steps, points, bars, reference lines, axes and a legend.

Plain strings, no dependency and no script: the report stays one offline file that a browser
draws at once. Every chart has a fixed size in user units and scales with its container
(``viewBox``); colours come from a palette that stays readable for red-green colour blindness.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

# Okabe-Ito: distinguishable for the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2")


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def dash(i: int) -> str:
    return DASHES[i % len(DASHES)]


@dataclass(kw_only=True, slots=True)
class Series:
    """One thing drawn: ``kind`` is line, step, points or bars."""

    name: str
    points: list[tuple[float, float]]
    colour: str = PALETTE[0]
    kind: str = "line"
    dash: str = ""
    width: float = 1.8


@dataclass(kw_only=True, slots=True)
class RefLine:
    """A horizontal (``y``) or vertical (``x``) reference line such as an SLO."""

    value: float
    label: str
    axis: str = "y"
    colour: str = "#C00000"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    ticks, value = [], start
    while True:  # through the first tick at or above hi, so the top of the data has room
        ticks.append(round(value, 12))
        if value >= hi - step * 1e-9:
            return ticks
        value += step


def load_axis(xs: Sequence[float]) -> dict[str, object]:
    """Chart keywords for an x axis of load levels: log2 with a tick per level when they span
    8x or more (1, 4, 16, 64), else linear."""
    log_x = len(xs) > 1 and xs[0] > 0 and xs[-1] / xs[0] >= 8
    if not log_x:
        return {"log_x": False}
    return {"log_x": True, "x_ticks": list(xs), "x_tick_labels": [f"{x:g}" for x in xs]}


def fmt_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


@dataclass(kw_only=True, slots=True)
class Chart:
    """An x-y chart; ``log_x`` puts ticks at powers of two (load levels 1, 4, 16, 64)."""

    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    refs: list[RefLine] = field(default_factory=list)
    log_x: bool = False
    x_ticks: Sequence[float] | None = None  # None: nice ticks over the data
    x_tick_labels: Sequence[str] | None = None
    y_min: float | None = 0.0  # None: from the data
    x_range: tuple[float, float] | None = None  # fixed x extent (bar charts: -0.5..n-0.5)
    width: int = 640
    height: int = 300
    margin: tuple[int, int, int, int] = (34, 16, 46, 64)  # top, right, bottom, left

    def _bounds(self) -> tuple[float, float, float, float]:
        xs = [x for s in self.series for x, _ in s.points] or [0.0, 1.0]
        ys = [y for s in self.series for _, y in s.points] or [0.0, 1.0]
        ys += [r.value for r in self.refs if r.axis == "y"]
        xs += [r.value for r in self.refs if r.axis == "x"]
        if self.x_ticks:
            xs += list(self.x_ticks)
        y_lo = min(ys) if self.y_min is None else min(self.y_min, min(ys))
        if self.x_range is not None:
            return self.x_range[0], self.x_range[1], y_lo, max(ys)
        return min(xs), max(xs), y_lo, max(ys)

    def render(self) -> str:
        x_lo, x_hi, y_lo, y_hi = self._bounds()
        y_ticks = nice_ticks(y_lo, y_hi)
        y_lo, y_hi = min(y_ticks[0], y_lo), max(y_ticks[-1], y_hi)
        if self.x_ticks is not None:
            x_ticks = list(self.x_ticks)
        elif self.log_x:
            x_ticks = [
                2.0**k
                for k in range(
                    math.floor(math.log2(max(x_lo, 1e-9))),
                    math.ceil(math.log2(max(x_hi, 1e-9))) + 1,
                )
            ]
        else:
            x_ticks = nice_ticks(x_lo, x_hi)
            if self.x_range is None:
                x_lo, x_hi = min(x_ticks[0], x_lo), max(x_ticks[-1], x_hi)
        if self.log_x:
            x_lo, x_hi = min(x_lo, min(x_ticks)), max(x_hi, max(x_ticks))
        top, right, bottom, left = self.margin
        plot_w, plot_h = self.width - left - right, self.height - top - bottom

        def sx(x: float) -> float:
            if self.log_x:
                lo, hi, x = (math.log2(max(v, 1e-12)) for v in (x_lo, x_hi, x))
            else:
                lo, hi = x_lo, x_hi
            return left + (x - lo) / ((hi - lo) or 1.0) * plot_w

        def sy(y: float) -> float:
            return top + plot_h - (y - y_lo) / ((y_hi - y_lo) or 1.0) * plot_h

        legend, legend_h = self._legend()
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} '
            f'{self.height + legend_h}" class="chart" role="img" '
            f'aria-label="{escape(self.title)}">',
            f'<text x="{left}" y="18" class="t">{escape(self.title)}</text>',
        ]
        parts += self._grid(x_ticks, y_ticks, sx, sy, (top, plot_h, left, plot_w))
        parts += [self._series_svg(s, sx, sy, plot_w) for s in self.series]
        parts += self._refs_svg(sx, sy, (top, plot_h, left, plot_w))
        parts.append(legend)
        parts.append("</svg>")
        return "".join(parts)

    def _grid(self, x_ticks, y_ticks, sx, sy, box) -> list[str]:  # type: ignore[no-untyped-def]
        top, plot_h, left, plot_w = box
        out = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="bg"/>']
        for y in y_ticks:
            py = sy(y)
            out.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{py:.1f}" y2="{py:.1f}" '
                f'class="g"/><text x="{left - 6}" y="{py + 4:.1f}" class="yl">'
                f"{fmt_tick(y)}</text>"
            )
        labels = self.x_tick_labels or [fmt_tick(x) for x in x_ticks]
        for x, label in zip(x_ticks, labels, strict=False):
            px = sx(x)
            out.append(
                f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + plot_h}" '
                f'class="g"/><text x="{px:.1f}" y="{top + plot_h + 16}" class="xl">'
                f"{escape(label)}</text>"
            )
        out.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{self.height - 8}" class="al">'
            f"{escape(self.x_label)}</text>"
        )
        out.append(
            f'<text transform="translate(14 {top + plot_h / 2:.0f}) rotate(-90)" '
            f'class="al">{escape(self.y_label)}</text>'
        )
        return out

    def _series_svg(self, s: Series, sx, sy, plot_w: float) -> str:  # type: ignore[no-untyped-def]
        title = f"<title>{escape(s.name)}</title>"
        if not s.points:
            return ""
        if s.kind == "points":
            dots = "".join(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="1.6"/>' for x, y in s.points
            )
            return f'<g fill="{s.colour}" fill-opacity="0.55" class="s">{title}{dots}</g>'
        if s.kind == "bars":
            return self._bars(s, sx, sy, title)
        pts = s.points
        if s.kind == "step":
            stepped = [pts[0]]
            for (_, y0), (x1, y1) in itertools.pairwise(pts):
                stepped += [(x1, y0), (x1, y1)]
            pts = stepped
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        dash_attr = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        marker = ""
        if len(s.points) <= 12 and s.kind == "line":
            marker = "".join(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6"/>' for x, y in s.points
            )
        return (
            f'<g class="s" fill="{s.colour}">{title}<polyline points="{path}" fill="none" '
            f'stroke="{s.colour}" stroke-width="{s.width}"{dash_attr}/>{marker}</g>'
        )

    def _bars(self, s: Series, sx, sy, title: str) -> str:  # type: ignore[no-untyped-def]
        """Bars centred on x; ``width`` is the bar width in x units, offset by ``dash``."""
        offset = float(s.dash or 0)
        rects = []
        for x, y in s.points:
            x0, x1 = sx(x + offset - s.width / 2), sx(x + offset + s.width / 2)
            top, bottom = sy(max(y, 0.0)), sy(min(y, 0.0))  # bars grow from 0, up or down
            rects.append(
                f'<rect x="{x0:.1f}" y="{top:.1f}" width="{max(1.0, x1 - x0):.1f}" '
                f'height="{max(0.5, bottom - top):.1f}"/>'
            )
        return f'<g class="s" fill="{s.colour}">{title}{"".join(rects)}</g>'

    def _refs_svg(self, sx, sy, box) -> list[str]:  # type: ignore[no-untyped-def]
        top, plot_h, left, plot_w = box
        out = []
        for r in self.refs:
            if r.axis == "y":
                py = sy(r.value)
                out.append(
                    f'<line x1="{left}" x2="{left + plot_w}" y1="{py:.1f}" y2="{py:.1f}" '
                    f'stroke="{r.colour}" stroke-dasharray="5 4" class="ref"/>'
                    f'<text x="{left + plot_w - 4}" y="{py - 4:.1f}" class="rl" '
                    f'fill="{r.colour}">{escape(r.label)}</text>'
                )
            else:
                px = sx(r.value)
                out.append(
                    f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + plot_h}" '
                    f'stroke="{r.colour}" stroke-dasharray="5 4" class="ref"/>'
                    f'<text x="{px + 4:.1f}" y="{top + 12}" class="rl" '
                    f'fill="{r.colour}" text-anchor="start">{escape(r.label)}</text>'
                )
        return out

    def _legend(self) -> tuple[str, int]:
        """Legend rows under the x-axis label (wrapping); returns the SVG and its height."""
        named = [s for s in self.series if s.name and not s.name.startswith("_")]
        if len(named) < 2:
            return "", 0
        left = self.margin[3]
        items, x, row = [], float(left), 0
        for s in named:
            size = 22 + 6.4 * len(s.name)
            if x + size > self.width - 8 and x > left:
                x, row = float(left), row + 1
            y = self.height + 4 + row * 16
            dash_attr = f' stroke-dasharray="{s.dash}"' if s.dash and s.kind != "bars" else ""
            items.append(
                f'<line x1="{x:.0f}" x2="{x + 14:.0f}" y1="{y:.0f}" y2="{y:.0f}" '
                f'stroke="{s.colour}" stroke-width="3"{dash_attr}/>'
                f'<text x="{x + 18:.0f}" y="{y + 4:.0f}" class="lg">'
                f"{escape(s.name)}</text>"
            )
            x += size
        return f'<g class="legend">{"".join(items)}</g>', (row + 1) * 16 + 6
