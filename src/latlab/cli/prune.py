"""``latlab prune``: flags -> latlab.compress.api.prune_checkpoint -> a model directory."""

from __future__ import annotations

import time
from typing import Any

import click

from latlab.cli import main
from latlab.cli.compress_options import (
    corpus_option,
    parse_seconds,
    print_report,
    progress_printer,
    timed_log,
)


@main.command("prune")
@click.argument("model", required=False)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--layers", type=int, default=None, help="Decoder layers to remove.")
@click.option("--layer-fraction", type=float, default=None, help="Share of layers to remove.")
@click.option(
    "--method",
    type=click.Choice(["angular", "block-influence"]),
    default="angular",
    show_default=True,
    help="angular: the contiguous block whose input and output differ least (Gromov et al. "
    "2024); block-influence: the layers changing their input least (ShortGPT).",
)
@click.option("--mlp-fraction", type=float, default=None, help="Share of MLP channels to remove.")
@click.option("--kv-groups", type=int, default=None, help="KV head groups to remove per layer.")
@corpus_option
@click.option(
    "--heal-steps", type=int, default=0, show_default=True, help="Distillation steps after."
)
@click.option("--heal-time", default=None, help="Time budget for healing, e.g. 5m.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it holds files.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prune(**opts: Any) -> None:
    """Remove layers (and MLP channels or KV groups) from MODEL and save the result to OUT.

    MODEL is a model directory (default: the bundled model). OUT is a model directory every
    backend loads (config and weights agree), with latlab-compress.json saying what was cut.
    """
    from latlab.compress.api import prune_checkpoint
    from latlab.compress.distill import UNLIMITED_STEPS, DistillSpec
    from latlab.compress.prune import PruneSpec

    spec = PruneSpec(
        layers=opts["layers"], layer_fraction=opts["layer_fraction"], method=opts["method"],
        mlp_fraction=opts["mlp_fraction"], kv_groups=opts["kv_groups"],
    )  # fmt: skip
    heal_time = parse_seconds(opts["heal_time"], "--heal-time")
    heal = None
    if opts["heal_steps"] or heal_time:
        steps = opts["heal_steps"] or UNLIMITED_STEPS
        heal = DistillSpec(layers=None, steps=steps, time_budget_s=heal_time)
    start = time.perf_counter()
    report = prune_checkpoint(
        opts["model"], opts["out_dir"], spec, list(opts["corpus"]) or None,
        overwrite=opts["overwrite"], heal_spec=heal, progress=progress_printer("healing"),
        log=timed_log(start),
    )  # fmt: skip
    print_report(report, opts["out_dir"], opts["as_json"])
