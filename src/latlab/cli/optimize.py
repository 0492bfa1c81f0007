"""``latlab optimize``: flags -> the lab (in-process, or served for --backend vllm) -> table,
decision record, JSON."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from latlab.cli import main
from latlab.cli.cost_options import price_options
from latlab.cli.deploy_options import vllm_cmd_option
from latlab.cli.outputs import check_writable_dir
from latlab.cli.store_options import open_store, record_options, record_run


def _with_run_options(
    plan: Any, budget: str | None, objective: str | None, price: float | None, device: str | None
) -> Any:
    """The plan with the command line's quality budget, objective and price (checked now)."""
    from latlab.cost import resolve_price
    from latlab.optimize.quality import parse_quality_budget

    changes: dict[str, Any] = {}
    if budget is not None:
        changes["thresholds"] = parse_quality_budget(budget)
    if objective is not None:
        changes["objective"] = objective
    if price is not None or device is not None:
        resolve_price(price, device)
        changes.update(price_per_hour=price, price_device=device)
    return dataclasses.replace(plan, **changes) if changes else plan


@main.command("optimize")
@click.argument("model", required=False)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML or YAML plan (recipes, workload, quality limits) "
    "[default: the built-in plan, every recipe level].",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write table.md, decision.md, result.json and plan.toml "
    "[default: ./latlab-runs/<UTC timestamp>/].",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=3),
    default=None,
    help="Measured repetitions per configuration (>= 3) [default: the plan's, 3].",
)
@click.option(
    "--quality-text",
    type=click.Path(dir_okay=False),
    default=None,
    help="Held-out text for the quality gate [default: the model's heldout.txt].",
)
@click.option(
    "--time-budget",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds after which no new trial starts; 0 = no limit "
    "[default: the plan's; 420 for the built-in plan].",
)
@click.option(
    "--quality-budget",
    default=None,
    help="Quality a lossy recipe may cost, replacing the default gate (top-1 >= 0.98, mean "
    "KL <= 0.01): e.g. ppl:+5%, top1:0.95, kl:0.05, p99kl:0.5, greedy:0.9 (comma-separated).",
)
@click.option(
    "--objective",
    type=click.Choice(["cost", "ttft", "itl", "throughput"]),
    default=None,
    help="Adopt a recipe when this figure improves beyond the spread, whatever else moves "
    "[default: any figure better, none worse]. cost = USD per million output tokens.",
)
@price_options
@click.option(
    "--backend",
    type=click.Choice(["latlab", "vllm"]),
    default="latlab",
    show_default=True,
    help="latlab: transformers and latlab's engine in-process; vllm: every configuration "
    "its own `vllm serve` launch, measured over HTTP (built-in plan: the vLLM recipes).",
)
@vllm_cmd_option
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON result on stdout.")
@record_options
def optimize(
    model: str | None,
    plan_path: str | None,
    out_dir: str | None,
    repeats: int | None,
    quality_text: str | None,
    time_budget: float | None,
    quality_budget: str | None,
    objective: str | None,
    price_per_hour: float | None,
    price_device: str | None,
    backend: str,
    vllm_cmd: str | None,
    as_json: bool,
    **store_opts: Any,
) -> None:
    """Apply latency recipes one at a time to MODEL, measure each against the baseline,
    gate each on quality, and write the strategy table and a decision record.

    MODEL is a local model directory (default: the bundled tiny model).
    """
    from latlab.optimize.report import default_out_dir, to_json, write_report
    from latlab.procs import sigterm_as_exit

    plan = _plan(plan_path, backend, repeats, time_budget)
    plan = _with_run_options(plan, quality_budget, objective, price_per_hour, price_device)
    out = Path(out_dir) if out_dir else default_out_dir()
    check_writable_dir(out, "--out")  # before a run of minutes, not after it
    store = open_store(store_opts["store_path"], store_opts["no_store"], store_opts["run_name"],
                       store_opts["tags"])  # fmt: skip
    start = time.perf_counter()

    def progress(message: str) -> None:
        click.echo(f"[{time.perf_counter() - start:6.1f}s] {message}", err=True)

    with sigterm_as_exit():  # a launched server is stopped on SIGTERM too
        result = _run(plan, model, quality_text, backend, vllm_cmd, out, progress)
    paths = write_report(result, out)
    _print_result(result, paths, as_json)
    record_run(store, kind="optimize", result=to_json(result), name=store_opts["run_name"],
               tags=store_opts["tags"], source_path=paths["json"])  # fmt: skip


def _plan(
    plan_path: str | None, backend: str, repeats: int | None, time_budget: float | None
) -> Any:
    """The plan file (or the backend's built-in plan) with --repeats and --time-budget."""
    from latlab.optimize.lab_plan import default_plan, default_vllm_plan, load_plan

    if plan_path:
        plan = load_plan(plan_path, backend=backend)
    else:
        plan = default_vllm_plan() if backend == "vllm" else default_plan()
    if repeats is not None:
        plan = dataclasses.replace(plan, repeats=repeats)
    if time_budget is not None:
        plan = dataclasses.replace(plan, time_budget_s=time_budget or None)
    return plan


def _print_result(result: Any, paths: dict[str, Any], as_json: bool) -> None:
    from latlab.optimize.report import strategy_table, to_json, verdict_lines

    if as_json:
        click.echo(json.dumps(to_json(result), indent=2))
    else:
        click.echo(strategy_table(result.trials, result.plan.price))
        click.echo("")
        for line in verdict_lines(result):  # the very lines decision.md's verdict holds
            click.echo(f"verdict: {line}")
    for what, path in paths.items():
        click.echo(f"wrote {what}: {path}", err=True)


def _run(
    plan: Any,
    model: str | None,
    quality_text: str | None,
    backend: str,
    vllm_cmd: str | None,
    out: Path,
    progress: Callable[[str], None],
) -> Any:
    """In-process lab, or the served lab launching one vLLM per configuration."""
    if backend == "vllm":
        from latlab.deploy.vllm import VllmBackend
        from latlab.optimize.served_lab import run_served_lab

        return run_served_lab(plan, model, quality_text, backend=VllmBackend(vllm_cmd=vllm_cmd),
                              progress=progress, log_dir=out / "logs")  # fmt: skip
    from latlab.optimize.lab import run_lab

    return run_lab(plan, model, quality_text, progress=progress)
