"""``latlab runs``: list the run store (``--tag``, ``--last``, ``--json``); ``runs show REF``."""

from __future__ import annotations

import json
from typing import Any

import click

from latlab.cli import main
from latlab.cli.store_options import (
    default_store_path,
    open_existing_store,
    resolve_runs,
    store_option,
)


def _console() -> Any:
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


@main.group("runs", invoke_without_command=True)
@store_option
@click.option("--tag", default=None, help="Only runs with this tag.")
@click.option("--kind", default=None, help="Only runs of this kind (bench, optimize, watch).")
@click.option("--name", default=None, help="Only runs with this name.")
@click.option(
    "--last",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="The newest N runs; 0 = all.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def runs(
    ctx: click.Context,
    store_path: str | None,
    tag: str | None,
    kind: str | None,
    name: str | None,
    last: int,
    as_json: bool,
) -> None:
    """List recorded runs, newest first. `latlab runs show REF` prints one run."""
    ctx.obj = {"store_path": store_path}
    if ctx.invoked_subcommand is not None:
        return
    from latlab.runs.views import runs_table

    store = open_existing_store(store_path)
    if store is None:
        if as_json:
            click.echo("[]")
        else:
            click.echo(
                f"no run store at {default_store_path(store_path)} yet: "
                "`latlab bench` and `latlab optimize` record their runs there"
            )
        return
    with store:
        infos = store.list_runs(tag=tag, kind=kind, name=name, last=last or None)
        total = store.count()
        where = store.path
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    if not infos:
        click.echo(f"no runs in {where} match" if total else f"no runs in {where} yet")
        return
    shown = f"{len(infos)} of {total}" if len(infos) < total else str(total)
    _console().print(runs_table(infos, f"runs in {where} ({shown}, newest first)"))


@runs.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result JSON.")
@click.option("--records", is_flag=True, help="With --json: include per-request records.")
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool, records: bool) -> None:
    """Print one run: REF is an id, a name (its newest run) or a result JSON file."""
    from latlab.runs.store import split_records
    from latlab.runs.views import show as show_run

    (run,) = resolve_runs([ref], (ctx.obj or {}).get("store_path"), records=as_json and records)
    if as_json:
        result = run.result if records else split_records(run.result)[0]
        click.echo(json.dumps({"run": run.info.to_dict(), "result": result}, indent=2))
        return
    console = _console()
    for item in show_run(run):
        console.print(item)
