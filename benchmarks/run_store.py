"""Cost of recording a run in the run store, against writing the same result as a JSON file.

    nice .venv/bin/python benchmarks/run_store.py [--requests 10000] [--chunks 128]

Builds a result with one level of N requests (each with C chunk timestamps, as ``latlab bench``
records them), then times, median of 3: ``json.dumps`` to a file (what ``bench --json`` does;
the anchor), ``RunStore.add_run``, ``RunStore.get`` with records, and listing 1,000 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from latlab.runs import RunStore


def synthetic_result(requests: int, chunks: int) -> dict:
    t0 = 10**12
    records = []
    for i in range(requests):
        send = t0 + i * 7_000_000
        chunk_ns = [send + 50_000_000 + j * 10_000_000 + (i * j) % 997 for j in range(chunks)]
        records.append({"request_id": f"c16-{i}", "ok": True, "error": None,
                        "error_detail": None, "prompt_tokens": 128, "output_tokens": chunks,
                        "output_tokens_source": "usage", "token_count_mismatch": False,
                        "ttft_ms": 50.0 + i % 13, "tpot_ms": 10.0, "e2e_ms": 1320.0,
                        "queue_ms": None, "num_chunks": chunks, "intended_send_ns": None,
                        "send_ns": send, "end_ns": chunk_ns[-1], "chunk_ns": chunk_ns,
                        "chunk_tokens": [1] * chunks})  # fmt: skip
    level = {"load": {"concurrency": 16}, "summary": {}, "records": records}
    return {"schema_version": "latlab.bench/1", "created_utc": "2026-01-01T00:00:00+00:00",
            "target": {"name": "synthetic"}, "levels": [level]}  # fmt: skip


def median_s(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--chunks", type=int, default=128)
    a = p.parse_args()
    result = synthetic_result(a.requests, a.chunks)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "run.json"
        json_s = median_s(lambda: file.write_text(json.dumps(result, indent=2)))
        store = RunStore.open(Path(tmp) / "runs.db")
        ids: list[int] = []
        add_s = median_s(lambda: ids.append(store.add_run(kind="bench", result=result)))
        get_s = median_s(lambda: store.get(ids[0]))
        slim = {**result, "levels": [{"load": {"concurrency": 1}, "summary": {}}]}
        for _ in range(1000 - len(ids)):
            store.add_run(kind="bench", result=slim)
        list_s = median_s(lambda: store.list_runs(last=0))
        db_mb = sum(f.stat().st_size for f in Path(tmp).glob("runs.db*")) / 1e6
        store.close()
    print(f"{a.requests} requests x {a.chunks} chunks; JSON file {file_mb(result):.1f} MB; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"json file write (anchor): {json_s:6.2f} s")
    print(f"store add_run:            {add_s:6.2f} s  ({add_s / json_s:.2f}x the anchor)")
    print(f"store get with records:   {get_s:6.2f} s")
    print(f"list 1,000 runs:          {list_s * 1000:6.1f} ms")
    print(f"store size (3 big runs + 997 small): {db_mb:.1f} MB")


def file_mb(result: dict) -> float:
    return len(json.dumps(result, indent=2)) / 1e6


if __name__ == "__main__":
    main()
