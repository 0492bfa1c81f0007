"""``latlab dashboard``: a Grafana dashboard JSON with metric names chosen by version."""

from __future__ import annotations

from typing import Any

import click

from latlab.cli import main
from latlab.errors import ConfigError


@main.command("dashboard")
@click.option(
    "--backend", type=click.Choice(["latlab", "vllm"]), default="latlab", show_default=True
)
@click.option("--vllm-version", default=None, help="vLLM version [default: newest known].")
@click.option("--title", default=None, help="Dashboard title.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the JSON here [default: stdout].",
)
@click.option(
    "--check-metrics",
    default=None,
    metavar="URL",
    help="Check every panel's series against a live server's /metrics; exit 1 if any is missing.",
)
@click.option(
    "--preview",
    default=None,
    metavar="PROMETHEUS_URL",
    help="Also render the panels from this Prometheus into a self-contained HTML file.",
)
@click.option("--preview-output", default="dashboard-preview.html", show_default=True)
@click.option(
    "--preview-range", default="15m", show_default=True, help="Time range the preview plots."
)
def dashboard_command(**opts: Any) -> int:
    """Grafana dashboard: latency percentiles, the watch probe beside the server, token rates,
    queue, KV cache, prefix cache, preemptions, spec decoding, HTTP status, error budget."""
    from latlab.monitor.dashboard import build_dashboard, check_against_scrape
    from latlab.monitor.names import resolve

    resolved = resolve(opts["backend"], opts["vllm_version"])
    if resolved.warning:
        click.echo(f"latlab dashboard: warning: {resolved.warning}", err=True)
    board = build_dashboard(resolved.names, title=opts["title"])
    if opts["output"]:
        with open(opts["output"], "w", encoding="utf-8") as fh:
            fh.write(board.to_json())
        click.echo(f"wrote {opts['output']}: {len(board.panels)} panels", err=True)
    elif not opts["check_metrics"] and not opts["preview"]:
        click.echo(board.to_json(), nl=False)
    code = 0
    if opts["check_metrics"]:
        from latlab.monitor.scrape import fetch

        problems = check_against_scrape(board, fetch(opts["check_metrics"]).names())
        for problem in problems:
            click.echo(f"latlab dashboard: missing series: {problem}", err=True)
        click.echo(f"{len(problems)} missing series on {opts['check_metrics']}", err=True)
        code = 1 if problems else 0
    if opts["preview"]:
        _preview(board, opts)
    return code


def _preview(board: Any, opts: dict[str, Any]) -> None:
    from latlab.monitor.durations import parse_duration
    from latlab.monitor.preview import render_preview

    seconds = parse_duration(opts["preview_range"], "--preview-range")
    html = render_preview(board, opts["preview"], range_s=seconds)
    try:
        with open(opts["preview_output"], "w", encoding="utf-8") as fh:
            fh.write(html)
    except OSError as exc:
        raise ConfigError(f"cannot write {opts['preview_output']} ({exc.strerror})") from None
    click.echo(f"wrote {opts['preview_output']}", err=True)
