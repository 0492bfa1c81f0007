"""Recording runs from ``latlab bench`` and reading them back with ``latlab runs``."""

import json
import subprocess
import sys

import pytest

from latlab.runs import RunStore
from latlab.testing import StubServer


def latlab(*args, timeout=120, cwd=None):
    code = "import sys; from latlab.cli import run; run(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def stub_url():
    with StubServer(ttft_s=0.005, itl_s=0.001, chunks=4) as url:
        yield url


def bench(url, *extra):
    return latlab("bench", "--url", url, "--num-requests", "4", "--input-len", "8",
                  "--output-len", "4", "--warmup", "0", *extra)  # fmt: skip


def test_bench_records_every_run_with_name_tags_records_and_command(
    stub_url, _private_run_store, tmp_path
):
    out = bench(stub_url, "--concurrency", "1,2", "--name", "base", "--tag", "ci", "--tag", "x",
                "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "recorded run 1 in" in out.stderr
    with RunStore.open(_private_run_store) as store:
        run = store.find("base")
    assert run.info.tags == ["ci", "x"] and run.info.source_path == str(tmp_path / "r.json")
    assert run.info.command[:2] == ["latlab", "bench"] and "--tag" in run.info.command
    assert [len(lv["records"]) for lv in run.result["levels"]] == [4, 4]
    assert run.result["environment"]["threads"]["usable_cpus"] >= 1
    assert run.result == json.loads((tmp_path / "r.json").read_text())


def test_no_store_records_nothing(stub_url, _private_run_store):
    out = bench(stub_url, "--no-store")
    assert out.returncode == 0, out.stderr
    assert "recorded" not in out.stderr and not _private_run_store.exists()


def test_store_flag_and_environment_choose_the_file(stub_url, tmp_path):
    out = bench(stub_url, "--store", str(tmp_path / "mine.db"))
    assert out.returncode == 0, out.stderr
    with RunStore.open(tmp_path / "mine.db") as store:
        assert store.count() == 1


def test_runs_lists_filters_and_prints_json(stub_url):
    for extra in (("--name", "a", "--tag", "t"), ("--name", "b"), ("--name", "c", "--tag", "t")):
        assert bench(stub_url, *extra).returncode == 0
    table = latlab("runs")
    assert table.returncode == 0, table.stderr
    assert "(3, newest first)" in table.stdout and "concurrency 1" in table.stdout
    listed = json.loads(latlab("runs", "--tag", "t", "--json").stdout)
    assert [r["name"] for r in listed] == ["c", "a"]
    assert [r["id"] for r in json.loads(latlab("runs", "--last", "1", "--json").stdout)] == [3]


def test_runs_show_by_id_name_and_file(stub_url, tmp_path):
    assert bench(stub_url, "--name", "base", "--json", str(tmp_path / "r.json")).returncode == 0
    for ref in ("1", "base", str(tmp_path / "r.json")):
        out = latlab("runs", "show", ref)
        assert out.returncode == 0, out.stderr
        assert "TTFT p50" in out.stdout and "concurrency 1" in out.stdout
    shown = json.loads(latlab("runs", "show", "base", "--json").stdout)
    assert shown["run"]["name"] == "base" and "records" not in shown["result"]["levels"][0]
    full = json.loads(latlab("runs", "show", "base", "--json", "--records").stdout)
    assert len(full["result"]["levels"][0]["records"]) == 4


def test_missing_run_and_empty_store_say_what_to_do(tmp_path):
    out = latlab("runs")
    assert out.returncode == 0 and "no run store at" in out.stdout
    missing = latlab("runs", "show", "7")
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("latlab: error: '7' is not a result file")
    RunStore.open().close()
    missing = latlab("runs", "show", "7")
    assert missing.stderr.strip() == (
        f"latlab: error: no run #7 in {RunStore.open().path}: `latlab runs` lists the ids there"
    )


def test_a_corrupt_store_fails_the_bench_before_any_load(tmp_path, _private_run_store):
    _private_run_store.write_bytes(b"garbage " * 512)
    server = StubServer(ttft_s=0.001, itl_s=0.001, chunks=2)
    with server as url:
        out = bench(url)
        assert server.stats()["requests"] == 0
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "cannot be read" in out.stderr and "left it untouched" in out.stderr
    assert _private_run_store.read_bytes() == b"garbage " * 512


def test_a_store_that_fails_at_the_end_keeps_the_result_in_a_file(tmp_path, capsys):
    from latlab.cli.store_options import record_run
    from latlab.errors import RunStoreError

    class FullDisk:
        path = tmp_path / "runs.db"

        def add_run(self, **kwargs):
            raise RunStoreError("database or disk is full")

        def close(self):
            pass

    assert record_run(FullDisk(), kind="bench", result={"levels": []}) is None
    err = capsys.readouterr().err
    assert "run not recorded: database or disk is full; its result is in" in err
    kept = list(tmp_path.glob("unrecorded-bench-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == {"levels": []}


def test_a_bad_name_fails_before_the_load(stub_url):
    out = bench(stub_url, "--name", "42")
    assert out.returncode == 2 and "is a number" in out.stderr
