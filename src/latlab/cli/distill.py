"""``latlab distill``: flags -> latlab.compress.api.distill_checkpoint -> a model directory."""

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


@main.command("distill")
@click.argument("teacher", required=False)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--layers", type=int, default=None, help="Student layers [default: half].")
@click.option(
    "--init",
    type=click.Choice(["prune", "spread"]),
    default="prune",
    show_default=True,
    help="prune: the teacher minus its least useful layers (angular distance); spread: "
    "evenly spaced teacher layers.",
)
@click.option("--mlp-fraction", type=float, default=None, help="Also remove this MLP share.")
@click.option("--steps", type=int, default=300, show_default=True)
@click.option("--time-budget", default=None, help="Stop training after this long, e.g. 10m.")
@corpus_option
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--seq-len", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--temperature", type=float, default=2.0, show_default=True)
@click.option(
    "--kl-weight",
    type=float,
    default=0.5,
    show_default=True,
    help="Weight of KL to the teacher; the rest is next-token cross-entropy.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--checkpoint-every", default="60s", show_default=True, help="e.g. 30s, 5m.")
@click.option("--threads", type=int, default=None, help="torch threads [default: torch's].")
@click.option("--resume", is_flag=True, help="Continue the checkpoint in OUT.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it holds files.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def distill(**opts: Any) -> int:
    """Train a smaller student of TEACHER by distillation and save it to OUT.

    TEACHER is a model directory (default: the bundled model). Ctrl-C keeps a checkpoint in
    OUT; rerun the same command with --resume to continue.
    """
    import torch

    from latlab.compress.api import distill_checkpoint
    from latlab.compress.distill import DistillInterrupted, DistillSpec

    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    spec = DistillSpec(
        layers=opts["layers"], init=opts["init"], mlp_fraction=opts["mlp_fraction"],
        steps=opts["steps"], time_budget_s=parse_seconds(opts["time_budget"], "--time-budget"),
        batch_size=opts["batch_size"], seq_len=opts["seq_len"], lr=opts["lr"],
        temperature=opts["temperature"], kl_weight=opts["kl_weight"], seed=opts["seed"],
        checkpoint_every_s=parse_seconds(opts["checkpoint_every"], "--checkpoint-every") or 60.0,
    )  # fmt: skip
    start = time.perf_counter()
    try:
        report = distill_checkpoint(
            opts["teacher"], opts["out_dir"], spec, list(opts["corpus"]) or None,
            overwrite=opts["overwrite"], resume=opts["resume"],
            progress=progress_printer("distill"), log=timed_log(start),
        )  # fmt: skip
    except DistillInterrupted as exc:
        click.echo("", err=True)
        click.echo(f"latlab: {exc}", err=True)
        return 130
    print_report(report, opts["out_dir"], opts["as_json"])
    return 0
