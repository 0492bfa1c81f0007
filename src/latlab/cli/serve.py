"""``latlab serve``: flags -> EngineConfig -> latlab.serve.server.serve.

Imports nothing heavy at module level: ``latlab --help`` imports every verb, and cold start
of ``latlab serve`` is a measured goal (torch, transformers and fastapi load only when the
command actually runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from latlab.cli import main
from latlab.errors import ConfigError
from latlab.plan.units import parse_bytes as parse_size

if TYPE_CHECKING:
    from latlab.serve.server import ServeOptions


def parse_bytes(text: str, flag: str = "--kv-cache-bytes") -> int:
    """A positive size from '2GiB', '512MB', '1e9' or an integer (the planner's parser)."""
    try:
        value = parse_size(text)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from None
    if value <= 0:
        raise ConfigError(f"{flag} must be positive")
    return value


def _names(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated and comma-separated values as one tuple."""
    return tuple(v.strip() for value in values for v in value.split(",") if v.strip())


# Request-shape limits (latlab.serve.guard.RequestLimits); unset ones derive from the context.
_LIMIT_FLAGS = {
    "max_json_depth": "Deepest JSON nesting accepted [default: 32].",
    "max_messages": "Most chat messages (plus content parts) in a request [default: 1024].",
    "max_stop": "Most stop strings in a request [default: 64].",
    "max_stop_token_ids": "Most stop_token_ids in a request [default: 1024].",
    "max_logit_bias": "Most logit_bias entries in a request [default: 1024].",
    "max_prompt_tokens": "Longest token-id prompt [default: the context length].",
}


def _limit_options(command):
    for name, help_text in reversed(_LIMIT_FLAGS.items()):
        flag = "--" + name.replace("_", "-")
        command = click.option(flag, name, type=click.IntRange(min=1), help=help_text)(command)
    return command


def guard_options(command):
    """Who may call the server, and how long a request may take to arrive (shared with
    latlab gateway: the same flags, the same rules)."""
    options = [
        click.option(
            "--api-key",
            envvar="LATLAB_API_KEY",
            show_envvar=True,
            default=None,
            help="Require 'Authorization: Bearer KEY' (all but /health and /metrics); the "
            "environment variable keeps the key out of the process list.",
        ),
        click.option(
            "--api-key-file",
            type=click.Path(dir_okay=False),
            default=None,
            help="Require one of the keys in this file (one a line).",
        ),
        click.option(
            "--allowed-hosts",
            multiple=True,
            help="Host header names accepted (comma-separated; '*' any) [default: loopback "
            "names when bound to loopback, else any].",
        ),
        click.option(
            "--allowed-origins",
            multiple=True,
            help="Browser origins allowed to call the server (comma-separated; '*' any) "
            "[default: none].",
        ),
        click.option(
            "--max-body-bytes",
            default=None,
            help="Largest request body, e.g. 4MiB [default: 64 bytes per context token, "
            "at least 256KiB].",
        ),
        click.option(
            "--header-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=10.0,
            show_default=True,
            help="Seconds for a request's head to arrive.",
        ),
        click.option(
            "--body-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=30.0,
            show_default=True,
            help="Seconds for a request's body to arrive.",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(min=1),
            default=1024,
            show_default=True,
            help="Open connections beyond this are answered 503.",
        ),
        click.option(
            "--shutdown-timeout",
            type=click.FloatRange(min=0),
            default=5.0,
            show_default=True,
            help="Seconds requests in flight get to finish on SIGTERM/Ctrl-C.",
        ),
    ]
    command = _limit_options(command)
    for option in reversed(options):
        command = option(command)
    return command


def serve_options(host: str, port: int, log_level: str, flags: dict[str, Any]) -> ServeOptions:
    """The HTTP side's flags (popped from ``flags``) as ServeOptions."""
    from latlab.serve.guard import GuardConfig, read_api_keys
    from latlab.serve.server import ServeOptions

    keys: tuple[str, ...] = ()
    if (key := flags.pop("api_key")) is not None:
        keys += (key.strip(),)
    if (key_file := flags.pop("api_key_file")) is not None:
        keys += read_api_keys(key_file)
    hosts = _names(flags.pop("allowed_hosts"))
    guard = GuardConfig(
        api_keys=keys,
        allowed_hosts=hosts or GuardConfig.hosts_for_bind(host),
        allowed_origins=_names(flags.pop("allowed_origins")),
        header_timeout_s=flags.pop("header_timeout"),
        body_timeout_s=flags.pop("body_timeout"),
        max_connections=flags.pop("max_connections"),
    )
    limits = {name: value for name in _LIMIT_FLAGS if (value := flags.pop(name)) is not None}
    if (body_bytes := flags.pop("max_body_bytes")) is not None:
        limits["max_body_bytes"] = parse_bytes(body_bytes, "--max-body-bytes")
    return ServeOptions(
        host=host,
        port=port,
        log_level=log_level,
        guard=guard,
        limit_overrides=limits,
        shutdown_timeout_s=flags.pop("shutdown_timeout"),
    )


def _engine_args(items: tuple[str, ...], given: dict[str, object]) -> dict[str, object]:
    """``--engine-arg`` settings; one that repeats a dedicated flag is refused, not merged."""
    import dataclasses

    from latlab.deploy.flags import parse_settings
    from latlab.engine.config import EngineConfig

    settings = parse_settings(items, "--engine-arg")
    known = {f.name for f in dataclasses.fields(EngineConfig)} - {"model"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"the latlab engine has no setting {', '.join(unknown)}; "
            f"its settings: {', '.join(sorted(known))}"
        )
    twice = sorted(set(settings) & set(given))
    if twice:
        raise ConfigError(f"{twice[0]} is set twice: by its own flag and by --engine-arg")
    return settings


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
    "--quantization",
    type=click.Choice(["int8", "int8-weight-only"]),
    default=None,
    help="int8 linear weights (per-channel scales): 'int8' also quantizes activations per "
    "token (int8 GEMMs), 'int8-weight-only' keeps them in floating point [default: none].",
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
@click.option(
    "--engine-arg",
    "engine_arg",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other EngineConfig field, e.g. kv_cache_dtype=bfloat16 (repeatable).",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--seed", type=int, default=None, help="Engine seed [default: 0].")
@click.option(
    "--ttft-buckets",
    default=None,
    help="TTFT histogram edges in seconds, e.g. 0.1,0.2,0.3,0.5,1 (put each SLO threshold "
    "on an edge; see latlab alerts) [default: vLLM's].",
)
@click.option(
    "--itl-buckets",
    default=None,
    help="Edges (s) of the inter-token latency and per-request TPOT histograms [default: vLLM's].",
)
@click.option(
    "--e2e-buckets",
    default=None,
    help="Edges (s) of the end-to-end and queue time histograms [default: vLLM's].",
)
@click.option(
    "--debug-step-delay-ms",
    type=click.FloatRange(0, 60_000),
    default=None,
    hidden=True,
    help="Test-only: sleep before every engine step (makes the server slow on purpose).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
    help="uvicorn log level.",
)
@guard_options
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
    ttft_buckets: str | None,
    itl_buckets: str | None,
    e2e_buckets: str | None,
    debug_step_delay_ms: float | None,
    engine_arg: tuple[str, ...],
    **engine_flags: Any,
) -> None:
    """Serve MODEL (default: the bundled tiny model) behind an OpenAI-compatible API.

    Bound to loopback (the default), it answers only loopback Host names and no web page
    can call it; see docs/security.md before serving beyond loopback.
    """
    options = serve_options(host, port, log_level, engine_flags)
    options.buckets = histogram_buckets(ttft_buckets, itl_buckets, e2e_buckets)
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
    if debug_step_delay_ms:
        fields["debug_step_delay_s"] = debug_step_delay_ms / 1000
    fields.update(_engine_args(engine_arg, fields))

    from latlab.engine.config import EngineConfig
    from latlab.serve.server import serve

    serve(EngineConfig(**fields), served_model_name=served_model_name, options=options)


def histogram_buckets(ttft: str | None, itl: str | None, e2e: str | None) -> Any:
    """The --*-buckets flags as HistogramBuckets (vLLM's edges where a flag is not given)."""
    from latlab.serve.prometheus import HistogramBuckets, parse_buckets

    given = {
        "ttft": (ttft, "--ttft-buckets"),
        "itl": (itl, "--itl-buckets"),
        "request": (e2e, "--e2e-buckets"),
    }
    edges = {key: parse_buckets(text, flag) for key, (text, flag) in given.items() if text}
    return HistogramBuckets(**edges)
