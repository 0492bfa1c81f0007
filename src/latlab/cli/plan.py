"""``latlab plan``: flags -> latlab.plan.plan_memory -> a table, JSON, or the formulas."""

from __future__ import annotations

import json

import click

from latlab.cli import main
from latlab.errors import ConfigError

_WEIGHT_DTYPES = ["fp32", "bf16", "fp16", "fp8", "int8", "int4"]
_KV_DTYPES = ["auto", "fp32", "bf16", "fp16", "fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4"]


@main.command("plan")
@click.argument("model", required=False)
@click.option("--device", default=None, help="Catalog device, e.g. H100-80GB (see --list).")
@click.option(
    "--memory", default=None, help="Device memory instead of --device: 24GiB, 80GB, 24e9."
)
@click.option(
    "--gpu-memory-utilization",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=0.9,
    show_default=True,
    help="Fraction of device memory the engine may use (weights + KV + reserve).",
)
@click.option(
    "--reserve",
    default="2GiB",
    show_default=True,
    help="Memory kept for activations and runtime.",
)
@click.option(
    "--kv-cache-bytes",
    default=None,
    help="Give the KV budget directly (e.g. 1GiB, as VLLM_CPU_KVCACHE_SPACE does).",
)
@click.option(
    "--weight-dtype", type=click.Choice(_WEIGHT_DTYPES), default="bf16", show_default=True
)
@click.option(
    "--weight-group-size",
    type=click.IntRange(min=1),
    default=None,
    help="Inputs per quantization scale [default: 128 for int4, per channel for int8/fp8].",
)
@click.option(
    "--kv-dtype",
    type=click.Choice(_KV_DTYPES),
    default="auto",
    show_default=True,
    help="KV cache dtype; auto = the weight dtype (bf16 for quantized weights).",
)
@click.option(
    "--kv-scales",
    type=click.Choice(["tensor", "token-head"]),
    default="tensor",
    show_default=True,
    help="Scales of a quantized cache: per tensor (vLLM fp8) or per token and head (LMDeploy).",
)
@click.option(
    "--context",
    type=click.IntRange(min=1),
    default=None,
    help="Tokens per sequence (prompt + output).",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="Concurrent sequences to fit."
)
@click.option(
    "--tp",
    type=click.IntRange(min=1),
    default=None,
    help="Tensor-parallel ranks: weights and KV heads split across them [default: 1; "
    "--backend vllm: the smallest that fits].",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=1),
    default=None,
    help="Tokens per KV block [default: 16; --backend vllm --device cpu: 128, vLLM CPU's].",
)
@click.option(
    "--backend",
    type=click.Choice(["latlab", "vllm"]),
    default="latlab",
    show_default=True,
    help="vllm: also print the `vllm serve` flags the plan implies (needs --context; "
    "--device cpu plans vLLM's CPU backend on this machine's RAM).",
)
@click.option(
    "--gpus-per-node",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="--backend vllm: GPUs one node has (beyond them, pipeline stages across nodes).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--explain", is_flag=True, help="Print each formula with the numbers filled in.")
@click.option("--list", "list_catalog", is_flag=True, help="List catalog models and devices.")
def plan_command(model, as_json, explain, list_catalog, backend, gpus_per_node, **options) -> None:
    """Weights, KV cache and capacity of MODEL (catalog name, config.json or model dir)."""
    from latlab.plan import explain_plan, plan_memory

    if list_catalog:
        _print_catalog()
        return
    if model is None:
        raise ConfigError("give a MODEL: a catalog name (see --list), a config.json or a dir")
    vllm = None
    if backend == "vllm":
        from latlab.plan.vllm import plan_vllm

        vllm = plan_vllm(model, gpus_per_node=gpus_per_node, **options)
        plan = vllm.memory
    else:
        options["tp"] = options["tp"] or 1
        options["block_size"] = options["block_size"] or 16
        plan = plan_memory(model, **options)
    if as_json:
        data = plan.to_dict()
        if explain:
            data["explain"] = explain_plan(plan)
        if vllm is not None:
            data["vllm"] = vllm.to_dict()
        click.echo(json.dumps(data, indent=2))
        return
    _print_table(plan)
    if explain:
        click.echo("")
        click.echo("\n".join(explain_plan(plan)))
    if vllm is not None:
        _print_vllm(vllm, model)


def _print_vllm(vllm, model: str) -> None:
    """The copy-pasteable command and what vLLM will log with it."""
    click.echo("")
    layout = f"tensor parallel {vllm.tensor_parallel_size}"
    if vllm.pipeline_parallel_size > 1:
        layout += f" x pipeline {vllm.pipeline_parallel_size}"
    click.echo(f"vLLM ({vllm.platform}, {layout}):")
    click.echo("  " + vllm.command_line(model))
    click.echo(
        f"vLLM should log: KV cache size: {vllm.kv_cache_tokens:,} tokens "
        f"({vllm.num_blocks:,} blocks of {vllm.block_size} per rank)"
    )
    for note in vllm.notes:
        click.echo(f"note: {note}")


def _print_catalog() -> None:
    from latlab.plan.catalog import device_names, get_device, model_names
    from latlab.plan.units import format_bytes

    click.echo("models:  " + ", ".join(model_names()))
    devices = [get_device(name) for name in device_names()]
    click.echo(
        "devices: " + ", ".join(f"{d.name} ({format_bytes(d.memory_bytes)})" for d in devices)
    )


def _rows(plan) -> list[tuple[str, str]]:
    """(figure, value) rows; sections whose inputs were not given are left out."""
    from latlab.plan.units import format_bytes, format_count

    shape = f"{plan.attention}, {plan.num_layers} layers, "
    if plan.attention == "MLA":
        shape += f"latent {plan.kv_latent_dim}"
    else:
        shape += f"{plan.num_kv_heads} KV heads x {plan.head_dim}"
    if plan.sliding_layers:
        shape += f", {plan.sliding_layers} layers window {plan.sliding_window:,}"
    params = format_count(plan.params_total)
    if plan.params_active != plan.params_total:
        params += f" ({format_count(plan.params_active)} active)"
    weights = f"{format_bytes(plan.weight_bytes)} ({plan.weight_dtype})"
    if plan.tp > 1:
        weights += f"; {format_bytes(plan.weight_bytes_per_rank)} per rank (tp {plan.tp})"
    rows = [
        ("model", f"{plan.model} ({plan.model_type})"),
        ("attention", shape),
        ("parameters", params),
        ("weights", weights),
        ("KV per token", f"{plan.kv_bytes_per_token:,} B ({plan.kv_dtype}, per rank)"),
        ("KV per block", f"{format_bytes(plan.kv_bytes_per_block)} ({plan.block_size} tokens)"),
    ]
    if plan.kv_budget_bytes is not None:
        if plan.memory_bytes is not None:
            rows.append(
                (
                    "device",
                    f"{plan.device} {format_bytes(plan.memory_bytes)} x "
                    f"{plan.gpu_memory_utilization:g}, reserve {format_bytes(plan.reserve_bytes)}",
                )
            )
        rows.append(("KV budget", format_bytes(plan.kv_budget_bytes)))
        rows.append(("KV blocks", f"{plan.num_blocks:,}"))
        rows.append(("KV tokens", f"{plan.kv_tokens:,}"))
    if plan.context is not None:
        rows.append(
            (
                f"KV per sequence @ {plan.context:,}",
                format_bytes(plan.kv_bytes_per_sequence),
            )
        )
    if plan.max_concurrency is not None:
        rows.append((f"max concurrency @ {plan.context:,}", f"{plan.max_concurrency:,}"))
    if plan.max_context is not None:
        rows.append(
            (
                f"max context @ {plan.concurrency} seqs",
                f"{plan.max_context:,} tokens (limited by {plan.max_context_limited_by})",
            )
        )
    return rows


def _print_table(plan) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"latlab plan: {plan.model}", show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    for name, value in _rows(plan):
        table.add_row(name, value)
    console = Console()
    console.print(table)
    for warning in plan.warnings:
        console.print(f"note: {warning}", markup=False)
