"""``latlab serve``: flags -> EngineConfig -> latlab.serve.server.serve.

Imports nothing heavy at module level: ``latlab --help`` imports every verb, and cold start
of ``latlab serve`` is a measured goal (torch, transformers and fastapi load only when the
command actually runs).
"""

from __future__ import annotations

import click

from latlab.cli import main
from latlab.errors import ConfigError
from latlab.plan.units import parse_bytes as parse_size


def parse_bytes(text: str) -> int:
    """A positive KV budget from '2GiB', '512MB', '1e9' or an integer (the planner's parser)."""
    try:
        value = parse_size(text)
    except ConfigError as exc:
        raise ConfigError(f"--kv-cache-bytes: {exc}") from None
    if value <= 0:
        raise ConfigError("--kv-cache-bytes must be positive")
    return value


@main.command("serve")
@click.argument("model", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="0 picks a free port.")
@click.option("--served-model-name", default=None, help="Name clients use [default: the model's].")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default=None,
    help="Weight dtype [default: auto].",
)
@click.option(
    "--max-num-seqs",
    type=click.IntRange(min=1),
    default=None,
    help="Most sequences in one batch [default: 64].",
)
@click.option(
    "--max-num-batched-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Token budget per engine step (chunked prefill) [default: 512].",
)
@click.option(
    "--max-model-len",
    type=click.IntRange(min=1),
    default=None,
    help="Context limit [default: the model's].",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=1),
    default=None,
    help="Tokens per KV cache block [default: 16].",
)
@click.option(
    "--kv-cache-bytes",
    default=None,
    help="KV cache budget, e.g. 2GiB [default: sized for max-num-seqs full contexts, "
    "capped at 25% of RAM].",
)
@click.option(
    "--kv-cache-memory-fraction",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="KV cache budget as a fraction of memory.",
)
@click.option("--no-prefix-caching", is_flag=True, help="Disable prefix caching.")
@click.option(
    "--num-speculative-tokens",
    type=click.IntRange(min=0),
    default=None,
    help="Prompt-lookup speculative decoding: up to N draft tokens per step; greedy output "
    "unchanged, sampling keeps its distribution [default: 0 = off].",
)
@click.option(
    "--speculative-max-batch",
    type=click.IntRange(min=1),
    default=None,
    help="No drafts while more sequences than this are running [default: 4].",
)
@click.option(
    "--prompt-lookup-max",
    type=click.IntRange(min=1),
    default=None,
    help="Longest n-gram matched for drafts [default: 3].",
)
@click.option(
    "--prompt-lookup-min",
    type=click.IntRange(min=1),
    default=None,
    help="Shortest n-gram matched for drafts [default: 1].",
)
@click.option(
    "--max-waiting",
    type=click.IntRange(min=1),
    default=None,
    help="Queue bound; beyond it requests get 503 [default: 1024].",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="Torch threads [default: torch's]."
)
@click.option("--device", default=None, help="cpu or cuda [default: cpu].")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--seed", type=int, default=None, help="Engine seed [default: 0].")
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
    help="uvicorn log level.",
)
def serve_command(
    model: str | None,
    host: str,
    port: int,
    served_model_name: str | None,
    kv_cache_bytes: str | None,
    no_prefix_caching: bool,
    threads: int | None,
    compile_: bool,
    log_level: str,
    **engine_flags: object,
) -> None:
    """Serve MODEL (default: the bundled tiny model) behind an OpenAI-compatible API."""
    if kv_cache_bytes is not None and engine_flags.get("kv_cache_memory_fraction") is not None:
        raise ConfigError("give --kv-cache-bytes or --kv-cache-memory-fraction, not both")
    fields = {key: value for key, value in engine_flags.items() if value is not None}
    fields["model"] = model
    if kv_cache_bytes is not None:
        fields["kv_cache_bytes"] = parse_bytes(kv_cache_bytes)
    if no_prefix_caching:
        fields["enable_prefix_caching"] = False
    if threads is not None:
        fields["num_threads"] = threads
    if compile_:
        fields["compile"] = True

    from latlab.engine.config import EngineConfig
    from latlab.serve.server import serve

    serve(
        EngineConfig(**fields),
        host=host,
        port=port,
        served_model_name=served_model_name,
        log_level=log_level,
    )
