"""Address a run the way a user does: by store id, by name, or by the JSON file a verb wrote.

``resolve("12")``, ``resolve("baseline")`` (the newest run of that name) and
``resolve("run.json")`` (or an optimize output folder holding ``result.json``) all give a
:class:`~latlab.runs.store.Run`, so ``compare`` and ``report`` take any of them interchangeably.
"""

from __future__ import annotations

import json
from pathlib import Path

from latlab.errors import RunNotFoundError, RunStoreError
from latlab.runs import describe
from latlab.runs.store import Run, RunInfo, RunStore


def _as_file(ref: str) -> Path | None:
    path = Path(ref)
    if path.is_dir() and (path / "result.json").is_file():
        return path / "result.json"
    if path.is_file():
        return path
    if ref.endswith(".json"):
        raise RunNotFoundError(f"no such file: {ref}")
    return None


def load_run_file(path: str | Path) -> Run:
    """A run from a result JSON file (``bench --json``, optimize's ``result.json``)."""
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RunStoreError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RunStoreError(
            f"{path} is not valid JSON ({exc}): give a latlab result file"
        ) from None
    if not isinstance(result, dict):
        raise RunStoreError(f"{path} holds no JSON object: give a latlab result file")
    kind = describe.kind_of(result)
    info = RunInfo(
        id=None,
        kind=kind,
        created_utc=describe.created_utc(result),
        target=describe.target_name(kind, result),
        headline=describe.headline(kind, result),
        source_path=str(path),
    )
    return Run(info=info, result=result, where=str(path))


def resolve(ref: str, store: RunStore | None, *, records: bool = True) -> Run:
    """The run ``ref`` names: an existing JSON file (or optimize folder) first, then a store id
    or name. With no store (``--no-store``) only files resolve."""
    path = _as_file(ref)
    if path is not None:
        return load_run_file(path)
    if store is None:
        raise RunNotFoundError(
            f"{ref!r} is not a result file, and there is no run store to look it up in: "
            "give a JSON file written by latlab, or --store PATH"
        )
    return store.find(ref, records=records)
