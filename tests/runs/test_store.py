"""RunStore: round trips, listing, addressing, concurrency, migrations and bad stores."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import pytest

from latlab.errors import RunNotFoundError, RunStoreError
from latlab.runs import RunStore
from latlab.runs.schema import APPLICATION_ID, MIGRATIONS


def bench_result(ttft_ms: float = 50.0, n: int = 3, levels=(1, 4)) -> dict:
    """A small result in the latlab.bench/1 shape, with per-request records."""

    def level(c: int) -> dict:
        records = [{"request_id": f"c{c}-{i}", "ok": True, "ttft_ms": ttft_ms + i,
                    "chunk_ns": [i, i + 1]} for i in range(n)]  # fmt: skip
        summary = {"completed": n, "failed": 0, "ttft_ms": {"p50": ttft_ms + 1},
                   "output_tokens_per_s": 100.0 * c}  # fmt: skip
        return {"load": {"concurrency": c}, "summary": summary, "records": records}

    return {"schema_version": "latlab.bench/1", "latlab_version": "0.1.0",
            "created_utc": "2026-01-02T03:04:05+00:00", "target": {"name": "stub"},
            "levels": [level(c) for c in levels]}  # fmt: skip


@pytest.fixture
def store(tmp_path):
    with RunStore.open(tmp_path / "runs.db") as s:
        yield s


def test_a_run_round_trips_with_its_records_kept_apart(store):
    result = bench_result()
    run_id = store.add_run(kind="bench", result=result, name="base", tags=["ci", "cpu", "ci"])
    run = store.get(run_id)
    assert run.result == result
    assert run.info.tags == ["ci", "cpu"] and run.info.name == "base" and run.label == "base"
    assert run.info.target == "stub" and run.info.created_utc == "2026-01-02T03:04:05+00:00"
    assert "concurrency 1,4" in run.info.headline and "6 ok" in run.info.headline
    slim = store.get(run_id, records=False).result
    assert all("records" not in lv for lv in slim["levels"])
    # the records are stored once, compressed, not inside the result JSON
    raw = store._conn.execute("SELECT result FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    assert "chunk_ns" not in raw


def test_a_growing_run_gets_levels_appended_with_their_records(store):
    run_id = store.add_run(kind="watch", result={"kind": "latlab.watch", "headline": "started",
                                                 "levels": []}, name="w")  # fmt: skip
    assert store.get(run_id).info.headline == "started"
    for i in range(2):
        level = {"label": f"window {i + 1}", "records": [{"ok": True, "n": i}] * (i + 1)}
        assert store.append_level(run_id, level, headline=f"{i + 1} windows") == i
    run = store.get(run_id)
    assert [len(lv["records"]) for lv in run.result["levels"]] == [1, 2]
    assert run.result["levels"][1]["label"] == "window 2"
    assert run.info.headline == run.result["headline"] == "2 windows"
    assert store.list_runs(kind="watch")[0].headline == "2 windows"
    with pytest.raises(RunNotFoundError, match="no run #99"):
        store.append_level(99, {"records": []})


def test_listing_is_newest_first_and_filters(store):
    ids = [store.add_run(kind="bench", result=bench_result(), tags=[t]) for t in "aab"]
    opt = store.add_run(kind="optimize", result={"kind": "latlab.optimize", "trials": [],
                                                  "adopted": []}, name="opt")  # fmt: skip
    assert [i.id for i in store.list_runs()] == [opt, *reversed(ids)]
    assert [i.id for i in store.list_runs(tag="a")] == [ids[1], ids[0]]
    assert [i.id for i in store.list_runs(kind="optimize")] == [opt]
    assert [i.id for i in store.list_runs(last=2)] == [opt, ids[2]]
    assert [i.id for i in store.list_runs(name="opt")] == [opt]
    assert store.list_runs(tag="none") == []
    assert store.list_runs(kind="optimize")[0].headline == "0 trials; adopted: nothing"


def test_find_by_id_hash_id_and_newest_name(store):
    first = store.add_run(kind="bench", result=bench_result(40), name="nightly")
    second = store.add_run(kind="bench", result=bench_result(60), name="nightly")
    assert store.find(str(first)).id == first
    assert store.find(f"#{second}").id == second
    assert store.find("nightly").id == second
    with pytest.raises(RunNotFoundError, match="no run #99 in"):
        store.find("99")
    with pytest.raises(RunNotFoundError, match="no run named 'weekly'"):
        store.find("weekly")


@pytest.mark.parametrize("name", ["12", " ", ""])
def test_names_that_would_be_ambiguous_or_empty_are_refused(store, name):
    with pytest.raises(RunStoreError, match="--name"):
        store.add_run(kind="bench", result=bench_result(), name=name)
    with pytest.raises(RunStoreError, match="--tag"):
        store.add_run(kind="bench", result=bench_result(), tags=[" "])
    assert store.count() == 0


def test_store_is_in_wal_mode_and_marked_as_latlab(store):
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def _write_runs(path: str, worker: int, count: int) -> None:
    with RunStore.open(path) as s:
        for i in range(count):
            s.add_run(kind="bench", result=bench_result(n=20), name=f"w{worker}-{i}")


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "runs.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_runs, args=(path, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with RunStore.open(path) as s:
        infos = s.list_runs()
        assert len(infos) == 60 and len({i.id for i in infos}) == 60
        assert {i.name for i in infos} == {f"w{w}-{i}" for w in range(4) for i in range(15)}
        assert all(len(s.get(i.id).result["levels"][0]["records"]) == 20 for i in infos[::7])


def test_threads_may_share_one_store(store):
    def write() -> None:
        for _ in range(10):
            store.add_run(kind="bench", result=bench_result())

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 40


def test_an_older_store_is_migrated_and_keeps_its_runs(tmp_path):
    path = tmp_path / "runs.db"
    with RunStore.open(path) as old:
        run_id = old.add_run(kind="bench", result=bench_result(), name="kept")
    newer = (*MIGRATIONS, "ALTER TABLE runs ADD COLUMN note TEXT;")
    with RunStore.open(path, migrations=newer) as s:
        assert s.find("kept").id == run_id
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == len(newer)
        assert "note" in [r[1] for r in s._conn.execute("PRAGMA table_info(runs)")]
    with pytest.raises(RunStoreError, match="newer than this latlab understands"):
        RunStore.open(path)


def test_a_failed_migration_leaves_the_store_as_it_was(tmp_path):
    path = tmp_path / "runs.db"
    RunStore.open(path).close()
    broken = (*MIGRATIONS, "ALTER TABLE runs ADD COLUMN a TEXT; ALTER TABLE nope ADD b TEXT;")
    with pytest.raises(RunStoreError):
        RunStore.open(path, migrations=broken)
    with RunStore.open(path) as s:  # still the current version, without column "a"
        assert "a" not in [r[1] for r in s._conn.execute("PRAGMA table_info(runs)")]


def test_a_corrupt_store_is_refused_with_what_to_do_and_left_untouched(tmp_path):
    path = tmp_path / "runs.db"
    garbage = b"this is not a database, but it holds someone's notes\n" * 100
    path.write_bytes(garbage)
    with pytest.raises(RunStoreError, match=r"cannot be read .* left it untouched: move it aside"):
        RunStore.open(path)
    assert path.read_bytes() == garbage
    assert not (tmp_path / "runs.db-wal").exists()


def test_a_store_with_damaged_pages_fails_clearly_when_read(tmp_path):
    path = tmp_path / "runs.db"
    with RunStore.open(path) as s:
        for _ in range(30):
            s.add_run(kind="bench", result=bench_result(n=200))
    data = bytearray(path.read_bytes())
    assert len(data) > 16 * 4096
    data[4096:] = b"\xff" * (len(data) - 4096)  # every page after the header's overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(RunStoreError, match="cannot be read"), RunStore.open(path) as s:
        for info in s.list_runs(last=0):
            s.get(info.id)


def test_another_programs_sqlite_file_is_not_taken_over(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(RunStoreError, match="not a latlab run store; it was left untouched"):
        RunStore.open(path)
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["mine"]


def test_a_folder_is_not_a_store(tmp_path):
    with pytest.raises(RunStoreError, match="is a folder"):
        RunStore.open(tmp_path)


def test_default_path_follows_the_environment(tmp_path, monkeypatch):
    from latlab.runs import default_store_path

    monkeypatch.setenv("LATLAB_STORE", str(tmp_path / "x.db"))
    assert default_store_path() == tmp_path / "x.db"
    monkeypatch.delenv("LATLAB_STORE")
    assert str(default_store_path()) == "latlab-runs/runs.db"
