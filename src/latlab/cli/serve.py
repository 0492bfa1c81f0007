"""``latlab serve``: flags -> EngineConfig + ServeOptions -> latlab.serve.server.serve.

Every flag is generated from a field of ``EngineConfig`` (the engine) or ``ServeOptions`` (the
HTTP server: address, keys, allow-lists, limits, timeouts), with its help and default taken
from there: a new field is a new flag, with no edit here. Imports nothing heavy at module
level: ``latlab --help`` imports every verb, and cold start of ``latlab serve`` is a measured
goal (torch, transformers and fastapi load only when the command actually runs).
"""

from __future__ import annotations

from typing import Any

import click

from latlab.cli import main
from latlab.cli.settings import pick, settings_options
from latlab.engine.config import EngineConfig
from latlab.errors import ConfigError
from latlab.serve.options import ServeOptions

_SERVE, _ENGINE = "serve_", "engine_"


@main.command("serve")
@click.argument("model", required=False)
@settings_options(ServeOptions, _SERVE)
@settings_options(EngineConfig, _ENGINE)
@click.option(
    "--engine-arg",
    "engine_arg",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any EngineConfig field as text, e.g. kv_cache_dtype=bfloat16 (repeatable; launchers "
    "pass settings this way).",
)
def serve_command(model: str | None, engine_arg: tuple[str, ...], **flags: Any) -> None:
    """Serve MODEL (default: the bundled tiny model) behind an OpenAI-compatible API.

    Bound to loopback (the default), it answers only loopback Host names and no web page
    can call it; see docs/security.md before serving beyond loopback.
    """
    options = ServeOptions.from_options(**pick(flags, _SERVE))
    given = pick(flags, _ENGINE)
    config = EngineConfig.from_options(model=model, **given, **_engine_args(engine_arg, given))

    from latlab.serve.server import serve

    serve(config, options)


def _engine_args(items: tuple[str, ...], given: dict[str, Any]) -> dict[str, Any]:
    """``--engine-arg`` settings; one that repeats a dedicated flag is refused, not merged."""
    from latlab.deploy.flags import parse_settings

    settings = parse_settings(items, "--engine-arg")
    twice = sorted(set(settings) & set(given))
    if twice:
        raise ConfigError(f"{twice[0]} is set twice: by its own flag and by --engine-arg")
    return settings
