"""The run store's tables, and the migrations that bring any older store up to date.

The schema version lives in SQLite's ``PRAGMA user_version``; ``PRAGMA application_id`` marks
the file as a latlab store, so a stray SQLite file is refused instead of altered. Migration
``n`` takes a store from version ``n`` to ``n + 1``; each runs in its own ``BEGIN IMMEDIATE``
transaction, so a store is never left half-migrated and two processes opening an old store at
once migrate it exactly once. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from latlab.errors import RunStoreError

# "LLab" in ASCII: marks a SQLite file as a latlab run store.
APPLICATION_ID = 0x4C4C6162

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: runs (result JSON without per-request records), tags, per-level records.
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        name TEXT,
        created_utc TEXT NOT NULL,
        recorded_utc TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        headline TEXT NOT NULL DEFAULT '',
        command TEXT,
        source_path TEXT,
        latlab_version TEXT,
        result TEXT NOT NULL
    );
    CREATE INDEX runs_by_name ON runs(name, id);
    CREATE INDEX runs_by_kind ON runs(kind, id);
    CREATE TABLE tags (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        PRIMARY KEY (run_id, tag)
    );
    CREATE INDEX tags_by_tag ON tags(tag, run_id);
    CREATE TABLE records (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        level INTEGER NOT NULL,
        count INTEGER NOT NULL,
        encoding TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, level)
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def _user_tables(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, where: str, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring the store to ``len(migrations)``; return the version it had before."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id != APPLICATION_ID and (app_id != 0 or version or _user_tables(conn)):
            raise RunStoreError(
                f"{where} is an SQLite file but not a latlab run store; it was left untouched: "
                "give --store a new path (or set LATLAB_STORE)"
            )
        if version > len(migrations):
            raise RunStoreError(
                f"{where} has run-store schema {version}, newer than this latlab understands "
                f"({len(migrations)}): upgrade latlab, or give --store another path"
            )
        for number in range(version, len(migrations)):
            for statement in _statements(migrations[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
        if app_id != APPLICATION_ID:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(version)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit our transaction)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
