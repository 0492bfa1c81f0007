"""``latlab gateway``: flags -> GatewayConfig -> latlab.gateway.server.serve."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from latlab.cli import main
from latlab.cli.settings import pick, settings_options
from latlab.errors import ConfigError
from latlab.plan.units import parse_bytes
from latlab.serve.options import ServeOptions

# The HTTP protection flags are latlab serve's: the same ServeOptions fields, the same rules.
_HTTP = "http_"
_OWN = ("host", "port", "log_level", "served_model_name")
# The gateway keeps no latency histograms of its own (its replicas do).
_NOT_HERE = ("ttft_buckets", "itl_buckets", "e2e_buckets")


def _pem_file(flag: str, help_text: str) -> Any:
    """An option naming a PEM file that must exist."""
    return click.option(
        flag, type=click.Path(dir_okay=False, exists=True), default=None, help=help_text
    )


@main.command("gateway")
@settings_options(ServeOptions, _HTTP, exclude=_OWN + _NOT_HERE)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="URL",
    help="An OpenAI-compatible server (http://HOST:PORT[/v1]); repeat for several.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8100, show_default=True, type=int, help="0 picks a free port.")
@click.option(
    "--cache",
    default=None,
    help="off, sqlite:FILE or redis://HOST:PORT/DB [default: sqlite in ~/.cache/latlab].",
)
@click.option(
    "--cache-ttl",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Seconds a cached response stays valid.",
)
@click.option(
    "--cache-max-bytes",
    default="1GiB",
    show_default=True,
    help="Size bound of the cache; least recently used entries go first.",
)
@click.option("--replay", type=click.Choice(["immediate", "paced"]), default="immediate",
              show_default=True, help="Cached streams: at once, or paced as recorded "
              "(per request: header x-latlab-cache-replay).")  # fmt: skip
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=int,
    help="Gateway processes on the port (each one core); the cache, limits (Redis) and "
    "metrics are shared, coalescing is per process.",
)
@click.option(
    "--no-coalesce",
    is_flag=True,
    help="Do not share one upstream call between identical deterministic requests.",
)
@click.option(
    "--no-direct-lane",
    is_flag=True,
    help="Send every request through the ASGI path; by default a request that needs no limit, "
    "trimming or cache read is answered from the HTTP protocol's callbacks (less CPU a request).",
)
@click.option(
    "--route",
    type=click.Choice(["least-load", "round-robin", "prefix"]),
    default="least-load",
    show_default=True,
    help="How an upstream is chosen.",
)
@click.option(
    "--load-factor",
    default=1.25,
    show_default=True,
    type=click.FloatRange(min=1.0),
    help="--route prefix: no upstream takes more than this x the mean load.",
)
@click.option(
    "--prefix-chars",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="--route prefix: leading characters that name a prefix.",
)
@click.option(
    "--api-keys",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML/YAML file of key hashes, tenants and limits (401/429).",
)
@click.option(
    "--limits-redis",
    default=None,
    metavar="URL",
    help="Redis shared by gateways for rate limits [default: the --cache Redis].",
)
@click.option(
    "--trim-to",
    type=click.IntRange(min=1),
    default=None,
    help="Trim prompts to this many tokens (per request: header x-latlab-trim-to).",
)
@click.option(
    "--tokenizer",
    default=None,
    help="Tokenizer for trimming [default: the upstream model's, when local].",
)
@click.option(
    "--health-interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Seconds between upstream health checks.",
)
@click.option(
    "--eject-after",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Failures in a row that eject an upstream.",
)
@click.option(
    "--upstream-timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Give up on an upstream silent this long.",
)
@click.option(
    "--upstream-key-file",
    "upstream_key_files",
    multiple=True,
    metavar="[URL=]FILE",
    help="The gateway's own API key for upstreams, read from FILE (URL=FILE: for that upstream "
    "only); clients' keys are never sent upstream.",
)
@_pem_file(
    "--upstream-ca-bundle",
    "PEM CA certificates for https:// upstreams [default: the system's trust store].",
)
@_pem_file(
    "--upstream-client-cert",
    "Mutual TLS: the gateway's own certificate (PEM) for https:// upstreams that ask.",
)
@_pem_file(
    "--upstream-client-key",
    "The private key of --upstream-client-cert (PEM, no passphrase) [default: in the "
    "certificate file].",
)
@click.option(
    "--upstream-no-verify",
    is_flag=True,
    help="Do not check https:// upstreams' certificates (test rigs only).",
)
@click.option(
    "--hash-key",
    is_flag=True,
    help="Read an API key from stdin, print the line for the keys file, and exit.",
)
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="warning", show_default=True, help="uvicorn log level.")  # fmt: skip
def gateway_command(
    upstreams: tuple[str, ...],
    host: str,
    port: int,
    cache: str | None,
    cache_ttl: float,
    cache_max_bytes: str,
    no_coalesce: bool,
    no_direct_lane: bool,
    upstream_key_files: tuple[str, ...],
    upstream_no_verify: bool,
    hash_key: bool,
    log_level: str,
    **options: object,
) -> None:
    """An OpenAI-compatible gateway in front of UPSTREAMs: cache, coalescing, trimming, routing.

    The HTTP protection flags are latlab serve's (same rules); --api-key/--api-key-file set one
    shared key checked first, --api-keys a file of per-tenant keys with limits.
    """
    if hash_key:
        from latlab.gateway.keys import hash_key as digest

        key = sys.stdin.readline().strip()
        if not key:
            raise ConfigError("--hash-key reads the key from stdin; got nothing")
        click.echo(f'sha256 = "{digest(key)}"')
        return
    from latlab.gateway.config import GatewayConfig, default_cache_spec
    from latlab.gateway.server import serve

    http = ServeOptions.from_options(
        host=host, port=port, log_level=log_level, **pick(options, _HTTP)
    )
    options = {key: value for key, value in options.items() if not key.startswith(_HTTP)}
    config = GatewayConfig(
        upstreams=list(upstreams),
        cache=cache or default_cache_spec(),
        cache_ttl_s=cache_ttl,
        cache_max_bytes=parse_bytes(cache_max_bytes),
        coalesce=not no_coalesce,
        direct_lane=not no_direct_lane,
        upstream_keys=read_upstream_keys(upstream_key_files),
        upstream_verify=not upstream_no_verify,
        health_interval_s=options.pop("health_interval"),  # type: ignore[arg-type]
        upstream_timeout_s=options.pop("upstream_timeout"),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    if config.workers > 1:
        from latlab.gateway.workers import serve_workers

        serve_workers(config, http)
    else:
        serve(config, http)


def read_upstream_keys(specs: tuple[str, ...]) -> dict[str, str]:
    """``[URL=]FILE`` specs -> {URL or "*": the key on FILE's first line}."""
    keys: dict[str, str] = {}
    for spec in specs:
        url, sep, path = spec.partition("=")
        if not sep or "://" not in url:
            url, path = "*", spec
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--upstream-key-file {path}: {exc.strerror or exc}") from None
        if not key:
            raise ConfigError(f"--upstream-key-file {path} is empty; put the key on its first line")
        if url in keys:
            raise ConfigError(f"--upstream-key-file gives two keys for {url}")
        keys[url] = key
    return keys
