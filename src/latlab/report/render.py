"""The report as one self-contained HTML file, or as Markdown with its charts as SVG files.

The HTML has no script and fetches nothing: charts are inline SVG, styles inline, and a
Content-Security-Policy forbids every fetch, so a stray reference would fail loudly (a console
error the browser test catches) instead of phoning home.
"""

from __future__ import annotations

import datetime as _dt
import re
from html import escape
from pathlib import Path

from latlab import __version__
from latlab.report.sections import Section, Table
from latlab.report.svg import colour
from latlab.runs.store import Run

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1280px;padding:16px 24px;color:#1b1b1b;background:#fff}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd}
p.i{color:#444;margin:4px 0 10px}.note{color:#8a5a00}
table{border-collapse:collapse;font-size:12px;margin:4px 0 14px}
th,td{border:1px solid #ddd;padding:2px 7px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
table.runs td,table.strategy td{text-align:left;white-space:normal}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:10px 22px}
.grid.c2{grid-template-columns:repeat(auto-fit,minmax(400px,1fr))}
.grid>figure:only-child{max-width:760px}
figure{margin:0}svg.chart{width:100%;height:auto;display:block}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:middle}
nav a{margin-right:12px}
svg .t{font-size:13px;font-weight:600}svg .xl,svg .yl,svg .lg,svg .rl{font-size:11px}
svg .yl{text-anchor:end}svg .xl,svg .al{text-anchor:middle}svg .al{font-size:12px}
svg .rl{text-anchor:end}svg .bg{fill:#fcfcfc;stroke:#ccc}svg .g{stroke:#ececec}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _runs_table(runs: list[Run]) -> str:
    rows = []
    for i, run in enumerate(runs):
        info, env = run.info, run.result.get("environment") or {}
        machine = f"{env.get('cpu_model', '?')} x{env.get('cpu_cores', '?')}"
        if env.get("gpus"):
            machine += ", " + ", ".join(env["gpus"])
        settings = (run.result.get("target") or {}).get("settings") or {}
        target = info.target + (
            " (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")" if settings else ""
        )
        rows.append(
            f'<tr><td><span class="sw" style="background:{colour(i)}"></span> '
            f"<b>{escape(run.label)}</b></td><td>{escape(run.where)}</td><td>{escape(info.kind)}"
            f"</td><td>{escape(target)}</td><td>{escape(info.created_utc)}</td>"
            f"<td>{escape(info.headline)}</td><td>{escape(machine)}</td></tr>"
        )
    return (
        '<table class="runs"><tr><th>run</th><th>from</th><th>kind</th><th>target</th>'
        f"<th>created (UTC)</th><th>summary</th><th>machine</th></tr>{''.join(rows)}</table>"
    )


def _section_html(section: Section) -> str:
    parts = [f'<section id="{_slug(section.title)}"><h2>{escape(section.title)}</h2>']
    if section.intro:
        parts.append(f'<p class="i">{escape(section.intro)}</p>')
    parts += [f'<p class="note">{escape(n)}</p>' for n in section.notes]
    if section.html:
        parts.append(section.html)
    if section.plots:
        parts.append(f'<div class="grid{" c2" if section.columns == 2 else ""}">')
        for plot in section.plots:
            table = _table_html(plot.table) if plot.table else ""
            parts.append(f"<figure>{plot.chart.render()}{table}</figure>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def to_html(runs: list[Run], sections: list[Section]) -> str:
    title = "latlab report: " + " vs ".join(r.label for r in runs)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    nav = "".join(f'<a href="#{_slug(s.title)}">{escape(s.title)}</a>' for s in sections)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="i">Generated {now} by latlab {__version__}. '
        "Figures as defined in latlab's docs/metrics.md; each chart's numbers are in the table "
        f"beneath it.</p>{_runs_table(runs)}<nav>{nav}</nav>"
        + "".join(_section_html(s) for s in sections)
        + "</body></html>\n"
    )


def _table_md(table: Table) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [row(table.headers), row(["---"] * len(table.headers))]
    return "\n".join(lines + [row(r) for r in table.rows])


def write_markdown(runs: list[Run], sections: list[Section], out: Path) -> list[Path]:
    """``out`` (report.md) and one SVG per chart in ``<stem>-svg/``; returns every file."""
    folder = out.with_name(out.stem + "-svg")
    folder.mkdir(parents=True, exist_ok=True)
    written, lines = [], [f"# latlab report: {' vs '.join(r.label for r in runs)}", ""]
    for i, run in enumerate(runs):
        lines.append(f"- run {i + 1} **{run.label}** ({run.where}): {run.info.headline}")
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        lines += [t for t in (section.intro, *section.notes) if t]
        for plot in section.plots:
            path = folder / f"{_slug(plot.slug or plot.chart.title)}.svg"
            path.write_text(plot.chart.render() + "\n", encoding="utf-8")
            written.append(path)
            lines += ["", f"![{plot.chart.title}]({folder.name}/{path.name})", ""]
            if plot.table:
                lines.append(_table_md(plot.table))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [out, *written]
