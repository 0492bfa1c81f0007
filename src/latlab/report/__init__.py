"""``latlab report``: runs as one offline HTML file (inline SVG, no script) or Markdown + SVG.

    from latlab.report import build_sections, write_report
    write_report([run_a, run_b], Path("report.html"))

Charts: latency CDFs per load level, latency against load with SLO lines, throughput against
latency, goodput per level, tokens per chunk, a timeline of one level, the capacity frontier of a
``bench --find`` run, and for ``optimize`` runs the strategy table with bars and quality figures;
a table of the numbers under every chart.
"""

from __future__ import annotations

from pathlib import Path

from latlab.errors import ConfigError
from latlab.report.frontier import frontier_section
from latlab.report.levels import level_views
from latlab.report.render import to_html, write_markdown
from latlab.report.sections import (
    Section,
    cdf_sections,
    chunk_section,
    goodput_section,
    load_section,
    throughput_section,
)
from latlab.report.strategy import strategy_section
from latlab.report.timeline import timeline_section
from latlab.runs.store import Run

__all__ = ["build_sections", "write_report"]


def build_sections(runs: list[Run], timeline_level: str | None = None) -> list[Section]:
    """Every section the runs have data for, bench runs overlaid, optimize runs one each."""
    bench = [r for r in runs if r.kind == "bench"]
    sections: list[Section] = []
    if bench:
        views = [level_views(r) for r in bench]
        for make in (load_section, throughput_section, goodput_section):
            if (s := make(bench, views)) is not None:
                sections.append(s)
        sections += cdf_sections(bench, views)
        for extra in (chunk_section(bench, views), timeline_section(bench, views, timeline_level)):
            if extra is not None:
                sections.append(extra)
    sections += [s for r in bench if (s := frontier_section(r)) is not None]
    sections += [strategy_section(r) for r in runs if r.kind == "optimize"]
    others = [r.label for r in runs if r.kind not in ("bench", "optimize")]
    if others:
        raise ConfigError(f"report draws bench and optimize runs; not: {', '.join(others)}")
    return sections


def write_report(
    runs: list[Run], out: Path, fmt: str = "html", timeline_level: str | None = None
) -> list[Path]:
    """Write the report; returns the files written (the HTML, or the Markdown and its SVGs)."""
    if not runs:
        raise ConfigError("report needs at least one run")
    sections = build_sections(runs, timeline_level)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "md":
        return write_markdown(runs, sections, out)
    if fmt != "html":
        raise ConfigError(f"--format is html or md, not {fmt!r}")
    out.write_text(to_html(runs, sections), encoding="utf-8")
    return [out]
