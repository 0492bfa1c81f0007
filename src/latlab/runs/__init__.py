"""The run store: every bench, optimize and watch run remembered in one SQLite file.

    from latlab.runs import RunStore, resolve
    with RunStore.open() as store:                       # ./latlab-runs/runs.db or $LATLAB_STORE
        run_id = store.add_run(kind="bench", result=result.to_dict(), name="base", tags=["ci"])
        run = resolve("base", store)                     # id, name or JSON file path

Imports only the standard library (the bench client's base install).
"""

from latlab.runs.describe import kind_of
from latlab.runs.refs import load_run_file, resolve
from latlab.runs.store import (
    DEFAULT_STORE,
    STORE_ENV,
    Run,
    RunInfo,
    RunStore,
    default_store_path,
)

__all__ = [
    "DEFAULT_STORE",
    "STORE_ENV",
    "Run",
    "RunInfo",
    "RunStore",
    "default_store_path",
    "kind_of",
    "load_run_file",
    "resolve",
]
