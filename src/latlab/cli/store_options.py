"""Run-store flags shared by the verbs that record runs (bench, optimize, watch) or read them.

``@record_options`` adds ``--store``, ``--no-store``, ``--name`` and ``--tag``; ``open_store``
runs *before* the work starts (a corrupt store fails fast, not after an hour of load), and
``record_run`` never loses a result: when the store cannot take it, the JSON goes to a file.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from latlab.errors import RunStoreError

_STORE_HELP = "Run store file [default: ./latlab-runs/runs.db; env: LATLAB_STORE]."


def store_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--store PATH`` alone, for verbs that only read runs."""
    return click.option(
        "--store",
        "store_path",
        type=click.Path(dir_okay=False),
        envvar="LATLAB_STORE",
        default=None,
        help=_STORE_HELP,
    )(fn)


def record_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--store``, ``--no-store``, ``--name``, ``--tag`` for verbs that record a run."""
    fn = click.option(
        "--tag",
        "tags",
        multiple=True,
        metavar="TAG",
        help="Tag the recorded run (repeatable); `latlab runs --tag T` filters.",
    )(fn)
    fn = click.option(
        "--name",
        "run_name",
        default=None,
        help="Name the recorded run; compare and report accept it as well as the id.",
    )(fn)
    fn = click.option("--no-store", is_flag=True, help="Do not record this run in the run store.")(
        fn
    )
    return store_option(fn)


def open_store(
    store_path: str | None,
    no_store: bool = False,
    name: str | None = None,
    tags: Sequence[str] = (),
) -> Any:
    """The run store to record into (None with ``--no-store``), with ``--name``/``--tag``
    checked now: a bad store or name fails before the work, not after it."""
    from latlab.runs.store import check_name, check_tags

    check_name(name)
    check_tags(tags)
    if no_store:
        return None
    from latlab.runs import RunStore

    return RunStore.open(store_path)


def default_store_path(store_path: str | None) -> Path:
    from latlab.runs import default_store_path as default

    return Path(store_path) if store_path else default()


def open_existing_store(store_path: str | None) -> Any:
    """The run store for a verb that only reads runs; None when none has been created yet."""
    path = default_store_path(store_path)
    if not path.exists():
        return None
    from latlab.runs import RunStore

    return RunStore.open(path)


def resolve_runs(refs: Sequence[str], store_path: str | None, *, records: bool = True) -> list:
    """The runs ``refs`` name (ids, names or JSON files), looked up in the store if there is one."""
    from latlab.runs import resolve

    store = open_existing_store(store_path)
    try:
        return [resolve(ref, store, records=records) for ref in refs]
    finally:
        if store is not None:
            store.close()


def _fallback_path(store: Any, kind: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for folder in (Path(store.path).parent, Path.cwd()):
        path = folder / f"unrecorded-{kind}-{stamp}.json"
        if folder.is_dir():
            return path
    return Path(f"unrecorded-{kind}-{stamp}.json")


def record_run(
    store: Any,
    *,
    kind: str,
    result: dict[str, Any],
    name: str | None = None,
    tags: Sequence[str] = (),
    source_path: str | None = None,
) -> int | None:
    """Record a finished run; print where. A store failure is a warning, the result is kept."""
    if store is None:
        return None
    try:
        run_id = store.add_run(
            kind=kind,
            result=result,
            name=name,
            tags=tags,
            command=["latlab", *sys.argv[1:]],
            source_path=source_path,
        )
    except RunStoreError as exc:
        store.close()
        kept = source_path
        if kept is None:
            path = _fallback_path(store, kind)
            path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            kept = str(path)
        click.echo(f"latlab: warning: run not recorded: {exc}; its result is in {kept}", err=True)
        return None
    store.close()
    click.echo(f"recorded run {run_id} in {store.path} (latlab runs show {run_id})", err=True)
    return run_id
