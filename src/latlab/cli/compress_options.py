"""What ``latlab prune`` and ``latlab distill`` share: durations, --corpus, progress, the report."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

# = latlab.compress.distill.UNLIMITED_STEPS (not imported here: that module pulls in torch)
_UNLIMITED = 10**9


def parse_seconds(text: str | None, flag: str) -> float | None:
    """'90', '90s', '10m', '1h30m' -> seconds (the duration syntax of every latlab flag)."""
    from latlab.monitor.durations import parse_duration

    return None if text is None else parse_duration(text, flag)


def corpus_option(func: Any) -> Any:
    return click.option(
        "--corpus",
        "corpus",
        multiple=True,
        type=click.Path(),
        help="Text file or directory of text files (repeatable) [default: the bundled "
        "model's training text: CPython docstrings, held-out files excluded].",
    )(func)


def progress_printer(label: str) -> Any:
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


def timed_log(start: float) -> Any:
    def log(message: str) -> None:
        if sys.stderr.isatty():
            click.echo("", err=True)
        click.echo(f"[{time.perf_counter() - start:6.1f}s] {message}", err=True)

    return log


def print_report(report: dict[str, Any], out: str, as_json: bool) -> None:
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
