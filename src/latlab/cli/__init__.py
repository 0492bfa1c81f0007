"""The ``latlab`` command: parses flags and calls the library; no logic lives here.

Each verb is its own module in this package and registers itself below. Only verbs that
are built are registered, so ``latlab --help`` never lists a placeholder.
"""

from __future__ import annotations

import sys

import click

from latlab import __version__
from latlab.errors import LatlabError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="latlab")
def main() -> None:
    """Measure LLM latency truthfully, serve a fast CPU engine, plan memory, optimize safely."""


# Modules in this package that each attach one verb to ``main`` when imported.
_COMMAND_MODULES: tuple[str, ...] = (
    "plan",
    "bench",
    "serve",
    "optimize",
    "gateway",
    "watch",
    "alerts",
    "dashboard",
    "runs",
    "compare",
    "report",
    "prune",
    "distill",
)


def _register_commands() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(f"latlab.cli.{name}")


def run(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, no tracebacks, non-zero exit codes."""
    _register_commands()
    try:
        exit_code = main.main(args=argv, prog_name="latlab", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("latlab: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"latlab: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except LatlabError as exc:
        click.echo(f"latlab: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("latlab: interrupted", err=True)
        sys.exit(130)
    # Commands return an int exit code (or None for success) in non-standalone mode.
    if isinstance(exit_code, int) and exit_code != 0:
        sys.exit(exit_code)
