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
    "--gateway",
    is_flag=True,
    help="Add the row of the latlab gateway in front of the servers (cache, routing, upstreams).",
)
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
    "--check-gateway-metrics",
    default=None,
    metavar="URL",
    help="Check the gateway row's series against a live gateway's /metrics (implies --gateway).",
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
    queue, KV cache, prefix cache, preemptions, spec decoding, HTTP status, error budget; with
    --gateway the gateway's cache, routing and upstreams."""
    from latlab.monitor.dashboard import (
        build_dashboard,
        check_against_scrape,
        check_gateway_scrape,
    )
    from latlab.monitor.names import resolve

    resolved = resolve(opts["backend"], opts["vllm_version"])
    if resolved.warning:
        click.echo(f"latlab dashboard: warning: {resolved.warning}", err=True)
    gateway = opts["gateway"] or bool(opts["check_gateway_metrics"])
    board = build_dashboard(resolved.names, title=opts["title"], gateway=gateway)
    if opts["output"]:
        with open(opts["output"], "w", encoding="utf-8") as fh:
            fh.write(board.to_json())
        click.echo(f"wrote {opts['output']}: {len(board.panels)} panels", err=True)
    elif not (opts["check_metrics"] or opts["check_gateway_metrics"] or opts["preview"]):
        click.echo(board.to_json(), nl=False)
    code = 0
    if opts["check_metrics"]:
        code |= _check(board, opts["check_metrics"], check_against_scrape)
    if opts["check_gateway_metrics"]:
        code |= _check(board, opts["check_gateway_metrics"], check_gateway_scrape)
    if opts["preview"]:
        _preview(board, opts)
    return code


def _check(board: Any, url: str, check: Any) -> int:
    """Print each panel series missing from ``url``'s scrape; 1 when any is."""
    from latlab.monitor.scrape import fetch

    problems = check(board, fetch(url).names())
    for problem in problems:
        click.echo(f"latlab dashboard: missing series: {problem}", err=True)
    click.echo(f"{len(problems)} missing series on {url}", err=True)
    return 1 if problems else 0


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
