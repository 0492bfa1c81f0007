"""``latlab report RUN [RUN ...] -o report.html``: one offline HTML file (or ``--format md``)."""

from __future__ import annotations

from pathlib import Path

import click

from latlab.cli import main
from latlab.cli.store_options import resolve_runs, store_option


@main.command("report")
@click.argument("refs", nargs=-1, required=True, metavar="RUN [RUN ...]")
@click.option(
    "-o",
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output file [default: report.html, or report.md with --format md].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md"]),
    default="html",
    show_default=True,
    help="md: Markdown with one SVG file per chart.",
)
@click.option(
    "--timeline",
    "timeline_level",
    default=None,
    metavar="LEVEL",
    help='The level drawn over time, e.g. "concurrency 16" [default: the highest].',
)
@store_option
def report(
    refs: tuple[str, ...],
    out_path: str | None,
    fmt: str,
    timeline_level: str | None,
    store_path: str | None,
) -> None:
    """Draw runs (ids, names or JSON files) as one self-contained report; several overlay."""
    from latlab.report import write_report

    runs = resolve_runs(refs, store_path)
    out = Path(out_path or ("report.md" if fmt == "md" else "report.html"))
    written = write_report(runs, out, fmt, timeline_level)
    click.echo(
        f"wrote {written[0]}" + (f" and {len(written) - 1} SVG files" if fmt == "md" else "")
    )
