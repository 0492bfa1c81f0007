"""``latlab prune`` and ``latlab distill``: flags -> latlab.compress.api -> a model directory."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from latlab.cli import main

# = latlab.compress.distill.UNLIMITED_STEPS (not imported here: that module pulls in torch)
_UNLIMITED = 10**9


def parse_seconds(text: str | None, flag: str) -> float | None:
    """'90', '90s', '10m', '1h30m' -> seconds (the duration syntax of every latlab flag)."""
    from latlab.monitor.durations import parse_duration

    return None if text is None else parse_duration(text, flag)


def _corpus_option(func: Any) -> Any:
    return click.option(
        "--corpus",
        "corpus",
        multiple=True,
        type=click.Path(),
        help="Text file or directory of text files (repeatable) [default: the bundled "
        "model's training text: CPython docstrings, held-out files excluded].",
    )(func)


def _progress_printer(label: str) -> Any:
    """A progress callback: a live line on a terminal, a line every 10% otherwise."""
    interactive = sys.stderr.isatty()
    shown = {"last": -1}

    def show(p: Any) -> None:
        pct = 100 * max(p.step / p.steps, p.elapsed_s / p.time_budget_s if p.time_budget_s else 0)
        line = (
            f"{label} step {p.step}{'' if p.steps >= _UNLIMITED else f'/{p.steps}'} "
            f"({min(pct, 100):.0f}%), {p.elapsed_s:.0f}s: "
            f"loss {p.loss:.3f} (KL {p.kl:.3f}, CE {p.ce:.3f}), lr {p.lr:.1e}, "
            f"{p.tokens_per_s:,.0f} tok/s"
        )
        if interactive:
            click.echo("\r" + line.ljust(100), nl=False, err=True)
        elif int(pct // 10) > shown["last"]:
            shown["last"] = int(pct // 10)
            click.echo(line, err=True)

    return show


def _log(start: float) -> Any:
    def log(message: str) -> None:
        if sys.stderr.isatty():
            click.echo("", err=True)
        click.echo(f"[{time.perf_counter() - start:6.1f}s] {message}", err=True)

    return log


def _print_report(report: dict[str, Any], out: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    before, after, params = report["before"], report["after"], report["parameters"]
    click.echo(
        f"wrote {out}: {before['num_hidden_layers']} -> {after['num_hidden_layers']} layers, "
        f"{params['after']:,} parameters (from {params['before']:,})"
    )
    quality = report.get("quality")
    if quality:
        click.echo(
            f"held-out perplexity {quality['perplexity']:.2f} (source "
            f"{quality['reference_perplexity']:.2f}, {quality['perplexity_change_pct']:+.1f}%), "
            f"top-1 agreement {quality['top1_agreement']:.3f}, KL {quality['mean_kl']:.3f}"
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
@_corpus_option
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
        overwrite=opts["overwrite"], heal_spec=heal, progress=_progress_printer("healing"),
        log=_log(start),
    )  # fmt: skip
    _print_report(report, opts["out_dir"], opts["as_json"])


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
@_corpus_option
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
            progress=_progress_printer("distill"), log=_log(start),
        )  # fmt: skip
    except DistillInterrupted as exc:
        click.echo("", err=True)
        click.echo(f"latlab: {exc}", err=True)
        return 130
    _print_report(report, opts["out_dir"], opts["as_json"])
    return 0
