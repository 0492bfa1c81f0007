"""The response cache in one SQLite file: survives restarts, shared by gateways on one host.

WAL mode lets readers run while one process writes; every write is one short ``BEGIN
IMMEDIATE`` transaction, so several gateway processes can share the file safely (SQLite's own
locking, with a busy timeout). The size bound is kept exactly across processes: triggers keep
the total bytes in a ``meta`` row, and a write that pushes it over the bound evicts the least
recently used entries in the same transaction. Expired entries are never returned and are
removed as writes pass by.

The sqlite3 module blocks, so each call runs on one worker thread (which owns the connection):
the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, size INTEGER NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL, last_used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries(last_used);
CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('bytes', 0);
CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries
    BEGIN UPDATE meta SET v = v + NEW.size WHERE k = 'bytes'; END;
CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries
    BEGIN UPDATE meta SET v = v - OLD.size WHERE k = 'bytes'; END;
CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries
    BEGIN UPDATE meta SET v = v - OLD.size + NEW.size WHERE k = 'bytes'; END;
"""
# A hit refreshes the entry's LRU time at most this often (a write per hit would make every
# hot entry a write).
_TOUCH_EVERY_S = 1.0
_BUSY_TIMEOUT_S = 5.0  # how long a process waits for another's lock on the file


def _prepare(db: sqlite3.Connection) -> None:
    """WAL mode and the schema, retried while another process holds the file's lock.

    Several gateways (or ``--workers``) opening a new file at once: switching it to WAL takes
    a lock that SQLite's busy timeout does not wait for, and one of them got "database is
    locked" at start (12 of 180 processes, three at a time, here), then served uncached. Every
    step is idempotent, so the whole is retried until the busy timeout.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class SQLiteStore:
    """``get``/``put`` of encoded recordings in one SQLite file, with TTL and an LRU byte bound."""

    kind = "sqlite"

    def __init__(self, path: str | Path, *, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latlab-sqlite")
        self._db: sqlite3.Connection | None = None

    @property
    def label(self) -> str:
        return f"sqlite:{self.path}"

    async def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            try:
                _prepare(db)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    async def open(self) -> None:
        """Create the file and schema now, so an unwritable path is reported at start-up."""
        await self._run(self._conn)

    async def get(self, key: str) -> bytes | None:
        return await self._run(self._get, key)

    def _get(self, key: str) -> bytes | None:
        db = self._conn()
        row = db.execute(
            "SELECT value, expires, last_used FROM entries WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        value, expires, last_used = row
        now = time.time()
        if expires <= now:
            return None
        if now - last_used > _TOUCH_EVERY_S:
            db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (now, key))
        return bytes(value)

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._run(self._put, key, value, ttl_s)

    def _put(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_bytes:
            return  # would evict everything and still not fit
        db = self._conn()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM entries WHERE expires <= ?", (now,))
            db.execute(
                "INSERT INTO entries (key, value, size, created, expires, last_used) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " size = excluded.size, created = excluded.created, expires = excluded.expires,"
                " last_used = excluded.last_used",
                (key, value, len(value), now, now + ttl_s, now),
            )
            self._evict(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _evict(self, db: sqlite3.Connection) -> None:
        while db.execute("SELECT v FROM meta WHERE k = 'bytes'").fetchone()[0] > self.max_bytes:
            db.execute(
                "DELETE FROM entries WHERE key IN "
                "(SELECT key FROM entries ORDER BY last_used, created LIMIT 1)"
            )

    async def stats(self) -> dict[str, int]:
        return await self._run(self._stats)

    def _stats(self) -> dict[str, int]:
        db = self._conn()
        entries = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        size = db.execute("SELECT v FROM meta WHERE k = 'bytes'").fetchone()[0]
        return {"entries": int(entries), "bytes": int(size)}

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(close)
        self._pool.shutdown(wait=True)
