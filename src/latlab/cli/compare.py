"""``latlab compare A B``: B - A per figure and load level with bootstrap intervals; exit 1 on a
regression beyond ``--fail-on-regression``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from latlab.cli import main
from latlab.cli.store_options import resolve_runs, store_option
from latlab.errors import ConfigError


def parse_percent(text: str | None, flag: str = "--fail-on-regression") -> float | None:
    """``5%`` or ``5`` -> 5.0."""
    if text is None:
        return None
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise ConfigError(f"{flag} takes a percentage, e.g. 5%, not {text!r}") from None
    if value < 0:
        raise ConfigError(f"{flag} must be >= 0%")
    return value


@main.command("compare")
@click.argument("a")
@click.argument("b")
@click.option(
    "--metric",
    "metrics",
    default=None,
    metavar="LIST",
    help="Figures, e.g. ttft_p50,ttft_p99,tpot_p50,e2e_p90,throughput,goodput "
    "[default: ttft_p50,ttft_p99,tpot_p50,throughput].",
)
@click.option(
    "--fail-on-regression",
    "fail_on",
    default=None,
    metavar="PCT",
    help="Exit 1 when a figure is worse by more than PCT (e.g. 5%) even at the "
    "interval's best case.",
)
@click.option("--confidence", type=float, default=0.95, show_default=True)
@click.option("--resamples", type=int, default=4000, show_default=True, help="Bootstrap resamples.")
@click.option(
    "--min-effect",
    type=float,
    default=3.0,
    show_default=True,
    metavar="PCT",
    help="Changes smaller than this (%) count as no difference even when the interval "
    "excludes 0 (runs on a shared machine drift by a few %).",
)
@click.option(
    "--allow-different-workloads",
    is_flag=True,
    help="Compare runs whose workloads differ (refused by default).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@store_option
def compare(
    a: str,
    b: str,
    metrics: str | None,
    fail_on: str | None,
    as_json: bool,
    store_path: str | None,
    **opts: Any,
) -> int:
    """Is run B faster or slower than run A, beyond noise? A and B are ids, names or JSON files."""
    from latlab.compare import compare_runs, parse_figures
    from latlab.compare.views import comparison_table, notes

    figures = parse_figures(metrics)
    limit = parse_percent(fail_on)
    run_a, run_b = resolve_runs([a, b], store_path)
    cmp = compare_runs(
        run_a,
        run_b,
        figures,
        confidence=opts["confidence"],
        resamples=opts["resamples"],
        min_effect_pct=opts["min_effect"],
        fail_on_regression_pct=limit,
        allow_different_workloads=opts["allow_different_workloads"],
        seed=opts["seed"],
    )
    if as_json:
        click.echo(json.dumps(cmp.to_dict(), indent=2))
    else:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 160)
        console.print(comparison_table(cmp))
        for line in notes(cmp):
            console.print(line)
    return 1 if cmp.regressions else 0
