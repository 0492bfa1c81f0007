"""The versioned JSON schema, CSV rows, and the console table."""

import csv
import json

from rich.console import Console

from latlab.bench import BenchConfig, CallableTarget, run_bench
from latlab.bench.results import CSV_FIELDS, SCHEMA_VERSION
from latlab.metrics import SLO

from .fake_targets import make_stream


def _result():
    config = BenchConfig(concurrency=[1, 2], num_requests=4, warmup=1, input_len="3",
                         output_len="3", slo=SLO(ttft_ms=1000))  # fmt: skip
    return run_bench(config, CallableTarget(make_stream()), False)


def test_json_schema_keys(tmp_path):
    res = _result()
    path = tmp_path / "r.json"
    res.write_json(path)
    d = json.loads(path.read_text())
    assert d["schema_version"] == SCHEMA_VERSION
    assert set(d) >= {"latlab_version", "created_utc", "target", "config", "environment",
                      "warmup_requests", "interrupted", "levels"}  # fmt: skip
    env = d["environment"]
    assert set(env) >= {"python", "cpu_model", "cpu_cores", "gpus", "packages"}
    assert env["packages"]["latlab"]
    assert d["config"]["concurrency"] == [1, 2] and d["config"]["slo"]["ttft_ms"] == 1000
    assert d["warmup_requests"] == 1
    assert len(d["levels"]) == 2
    level = d["levels"][0]
    assert level["load"] == {"concurrency": 1}
    s = level["summary"]
    assert s["ttft_ms"]["p50"] > 0 and s["completed"] == 4 and s["failed"] == 0
    assert s["goodput_rps"] > 0 and s["output_tokens_per_s"] > 0 and s["requests_per_s"] > 0
    assert set(level["client"]) >= {"client_bound", "loop_lag_ms", "cpu_s", "reasons"}
    rec = level["records"][0]
    assert set(rec) >= {"request_id", "ok", "ttft_ms", "e2e_ms", "chunk_ns", "chunk_tokens"}


def test_csv_has_one_row_per_request(tmp_path):
    path = tmp_path / "r.csv"
    _result().write_csv(path)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 8
    assert tuple(rows[0]) == CSV_FIELDS
    assert rows[0]["level"] == "concurrency=1" and rows[-1]["level"] == "concurrency=2"


def test_table_shows_every_level_and_the_warnings():
    res = _result()
    res.levels[1].client.client_bound = True
    res.levels[1].client.reasons.append("event-loop lag p90 12.0 ms > 10 ms")
    console = Console(record=True, width=200)
    res.render(console)
    text = console.export_text()
    assert "concurrency 1" in text and "concurrency 2" in text
    assert "TTFT p50" in text and "BOUND" in text
    assert "client-bound at concurrency 2" in text


def test_live_progress_bar_runs_without_a_terminal(capsys):
    config = BenchConfig(concurrency=[1, 2], num_requests=3, warmup=0, input_len="2",
                         output_len="2")  # fmt: skip
    res = run_bench(config, CallableTarget(make_stream()), progress=True)
    assert [lv.summary.completed for lv in res.levels] == [3, 3]
    assert "concurrency 2" in capsys.readouterr().err
