"""``RunStore``: every bench, optimize and watch run kept in one SQLite file.

A run is its result JSON (the same document ``--json`` writes) plus its per-request records,
which are stored apart, one compressed blob per load level, so listing and showing runs never
reads them. The store uses WAL so readers never block the writer and several processes may
record at once (SQLite serialises the writers; each waits up to ``busy_timeout_s``). A file that
is not a readable store is never modified: the error says so and what to do.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latlab.errors import RunNotFoundError, RunStoreError
from latlab.runs import describe
from latlab.runs.schema import MIGRATIONS, migrate

STORE_ENV = "LATLAB_STORE"
DEFAULT_STORE = Path("latlab-runs") / "runs.db"
_RECORDS_ENCODING = "json+zlib"


def default_store_path() -> Path:
    """``$LATLAB_STORE`` when set, else ``./latlab-runs/runs.db`` (next to optimize's folders)."""
    env = os.environ.get(STORE_ENV)
    return Path(env) if env else DEFAULT_STORE


def _now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(kw_only=True, slots=True)
class RunInfo:
    """One row of ``latlab runs``: what a run is, without its figures."""

    id: int | None  # None for a run read from a JSON file
    kind: str  # bench | optimize | watch | ...
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    created_utc: str = ""
    recorded_utc: str = ""
    target: str = ""
    headline: str = ""
    source_path: str | None = None
    command: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "tags": list(self.tags),
            "created_utc": self.created_utc,
            "recorded_utc": self.recorded_utc,
            "target": self.target,
            "headline": self.headline,
            "source_path": self.source_path,
            "command": self.command,
        }


@dataclass(kw_only=True, slots=True)
class Run:
    """A stored or file-backed run: its info and its result JSON (records included if loaded)."""

    info: RunInfo
    result: dict[str, Any]
    where: str  # "STORE#ID" or the JSON file's path: where a reader can find it again

    @property
    def id(self) -> int | None:
        return self.info.id

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def label(self) -> str:
        """Short name for legends and tables: the run's name, else ``#id``, else the file."""
        if self.info.name:
            return self.info.name
        if self.info.id is not None:
            return f"#{self.info.id}"
        return Path(self.where).stem


def check_name(name: str | None) -> None:
    if name is None:
        return
    if not name.strip():
        raise RunStoreError("--name must not be empty")
    if name.strip().isdigit():
        raise RunStoreError(f"--name {name!r} is a number, which addresses runs by id: add a word")


def check_tags(tags: Sequence[str]) -> list[str]:
    clean = sorted({t.strip() for t in tags})
    if any(not t for t in clean):
        raise RunStoreError("--tag must not be empty")
    return clean


def split_records(result: dict[str, Any]) -> tuple[dict[str, Any], list[list[Any]]]:
    """The result without ``levels[i].records``, and those records, one list per level."""
    levels = result.get("levels")
    if not isinstance(levels, list):
        return result, []
    slim = dict(result)
    slim["levels"] = [{k: v for k, v in lv.items() if k != "records"} for lv in levels]
    return slim, [list(lv.get("records") or ()) for lv in levels]


def _encode(records: list[Any]) -> bytes:
    text = json.dumps(records, separators=(",", ":"), allow_nan=True)
    return zlib.compress(text.encode(), 1)  # level 1: 4x smaller, and fast on 10k records


def _decode(encoding: str, data: bytes) -> list[Any]:
    if encoding != _RECORDS_ENCODING:
        raise RunStoreError(f"records stored as {encoding!r}, which this latlab cannot read")
    return json.loads(zlib.decompress(data))


class RunStore:
    """The SQLite run store. ``RunStore.open(path)`` creates or migrates it; safe across threads
    (one lock) and processes (SQLite's locks, WAL)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        busy_timeout_s: float = 30.0,
        migrations: Sequence[str] = MIGRATIONS,
    ) -> RunStore:
        """Open (creating folders and tables) the store at ``path`` (default: see
        :func:`default_store_path`). Raises RunStoreError, never alters an unreadable file."""
        where = Path(path) if path is not None else default_store_path()
        if where.is_dir():
            raise RunStoreError(
                f"run store {where} is a folder: give a file path, e.g. {where}/runs.db"
            )
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunStoreError(f"cannot create the folder for run store {where}: {exc}") from None
        conn = None
        try:
            conn = sqlite3.connect(
                where, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA foreign_keys = ON")
            # Reading the header first: a corrupt file fails here, before any write.
            conn.execute("PRAGMA application_id").fetchone()
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            migrate(conn, str(where), migrations)
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise _unusable(where, exc) from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return cls(where, conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _using(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; writes in one IMMEDIATE transaction."""
        with self._lock:
            try:
                if not write:
                    yield self._conn
                    return
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise _unusable(self.path, exc) from None

    # ------------------------------------------------------------------ writing
    def add_run(
        self,
        *,
        kind: str,
        result: dict[str, Any],
        name: str | None = None,
        tags: Iterable[str] = (),
        command: Sequence[str] | None = None,
        source_path: str | os.PathLike[str] | None = None,
    ) -> int:
        """Record one run; returns its id. ``result`` is the run's JSON document."""
        check_name(name)
        clean_tags = check_tags(list(tags))
        slim, per_level = split_records(result)
        blobs = [(i, len(recs), _encode(recs)) for i, recs in enumerate(per_level) if recs]
        row = (
            kind,
            name.strip() if name else None,
            describe.created_utc(result) or _now_utc(),
            _now_utc(),
            describe.target_name(kind, result),
            describe.headline(kind, result),
            None if command is None else json.dumps(list(command)),
            None if source_path is None else os.fspath(source_path),
            str(result.get("latlab_version") or ""),
            json.dumps(slim, separators=(",", ":")),
        )
        with self._using(write=True) as conn:
            cur = conn.execute(
                "INSERT INTO runs (kind, name, created_utc, recorded_utc, target, headline, "
                "command, source_path, latlab_version, result) VALUES (?,?,?,?,?,?,?,?,?,?)",
                row,
            )
            run_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO tags (run_id, tag) VALUES (?, ?)", [(run_id, t) for t in clean_tags]
            )
            conn.executemany(
                "INSERT INTO records (run_id, level, count, encoding, data) VALUES (?,?,?,?,?)",
                [(run_id, i, n, _RECORDS_ENCODING, blob) for i, n, blob in blobs],
            )
        return run_id

    def append_level(
        self, run_id: int, level: dict[str, Any], *, headline: str | None = None
    ) -> int:
        """Add one level (its ``records`` stored apart) to a recorded run that grows while it
        runs (a watch); returns the level's index. One transaction: a reader sees the level
        with its records or not at all."""
        records = list(level.get("records") or ())
        slim = {k: v for k, v in level.items() if k != "records"}
        with self._using(write=True) as conn:
            row = conn.execute("SELECT result FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run #{run_id} in {self.path} to add a level to")
            result = json.loads(row[0])
            levels = result.setdefault("levels", [])
            levels.append(slim)
            if headline is not None:
                result["headline"] = headline
            conn.execute(
                "UPDATE runs SET result = ?, headline = coalesce(?, headline) WHERE id = ?",
                (json.dumps(result, separators=(",", ":")), headline, run_id),
            )
            if records:
                conn.execute(
                    "INSERT INTO records (run_id, level, count, encoding, data) VALUES (?,?,?,?,?)",
                    (run_id, len(levels) - 1, len(records), _RECORDS_ENCODING, _encode(records)),
                )
        return len(levels) - 1

    # ------------------------------------------------------------------ reading
    _INFO_COLUMNS = (
        "id, kind, name, created_utc, recorded_utc, target, headline, source_path, command, "
        "(SELECT group_concat(tag, char(10)) FROM tags WHERE tags.run_id = runs.id)"
    )

    @staticmethod
    def _info(row: tuple[Any, ...]) -> RunInfo:
        tags = sorted(row[9].split("\n")) if row[9] else []
        return RunInfo(
            id=row[0],
            kind=row[1],
            name=row[2],
            created_utc=row[3],
            recorded_utc=row[4],
            target=row[5],
            headline=row[6],
            source_path=row[7],
            command=json.loads(row[8]) if row[8] else None,
            tags=tags,
        )

    def list_runs(
        self,
        *,
        tag: str | None = None,
        kind: str | None = None,
        name: str | None = None,
        last: int | None = None,
    ) -> list[RunInfo]:
        """Runs, newest first, filtered by tag, kind and name; at most ``last`` of them."""
        where, args = [], []
        if tag is not None:
            where.append("id IN (SELECT run_id FROM tags WHERE tag = ?)")
            args.append(tag)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        sql = f"SELECT {self._INFO_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if last:
            sql += f" LIMIT {int(last)}"
        with self._using() as conn:
            return [self._info(row) for row in conn.execute(sql, args)]

    def count(self) -> int:
        with self._using() as conn:
            return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])

    def get(self, run_id: int, *, records: bool = True) -> Run:
        """The run with this id, with its per-request records unless ``records=False``."""
        with self._using() as conn:
            row = conn.execute(
                f"SELECT {self._INFO_COLUMNS}, result FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(
                    f"no run #{run_id} in {self.path}: `latlab runs` lists the ids there"
                )
            blobs = []
            if records:
                blobs = conn.execute(
                    "SELECT level, encoding, data FROM records WHERE run_id = ? ORDER BY level",
                    (run_id,),
                ).fetchall()
        result = json.loads(row[10])
        for level, encoding, data in blobs:
            result["levels"][level]["records"] = _decode(encoding, data)
        return Run(info=self._info(row[:10]), result=result, where=f"{self.path}#{run_id}")

    def find(self, ref: str, *, records: bool = True) -> Run:
        """A run by id (``12`` or ``#12``) or by name (the newest run with that name)."""
        text = ref.strip().removeprefix("#")
        if text.isdigit():
            return self.get(int(text), records=records)
        with self._using() as conn:
            row = conn.execute(
                "SELECT id FROM runs WHERE name = ? ORDER BY id DESC LIMIT 1", (ref,)
            ).fetchone()
        if row is None:
            raise RunNotFoundError(
                f"no run named {ref!r} in {self.path}, and no such JSON file: "
                "`latlab runs` lists ids and names"
            )
        return self.get(int(row[0]), records=records)


def _unusable(path: Path, exc: sqlite3.DatabaseError) -> RunStoreError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return RunStoreError(
            f"run store {path} stayed locked by another process ({text}); retry, or give "
            "--store another path"
        )
    if "unable to open" in text or "readonly" in text or "read-only" in text:
        return RunStoreError(
            f"cannot write the run store {path} ({text}): give --store a writable path, "
            "or --no-store"
        )
    return RunStoreError(
        f"run store {path} cannot be read ({text}); latlab left it untouched: move it aside "
        "(`sqlite3 FILE .recover` may rescue its runs), or give --store another path"
    )
