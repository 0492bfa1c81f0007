"""How fast a browser opens ``latlab report`` of a 10,000-request run (goal: under a second).

    nice .venv/bin/python benchmarks/report_load.py [--requests 10000] [--repeats 5]

Measures a real run (``latlab bench`` against the stub server in its own process: 3 levels,
10,000 requests in all), writes its report, then loads it in headless Chromium ``--repeats``
times (fresh page each time) and prints the median of the page's own navigation timing (start
to the end of the load event) and of the wall time seen from here. The anchor, loaded the same
way in the same browser, is a blank HTML page: the browser's own floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from latlab.bench import BenchConfig, OpenAITarget, run_bench
from latlab.metrics import SLO
from latlab.report import write_report
from latlab.runs import Run, RunInfo
from latlab.testing import stub_process
from latlab.testing.browser import HeadlessChromium


def measure_run(requests: int) -> dict:
    per_level = -(-requests // 3)  # at least ``requests`` in all
    config = BenchConfig(
        concurrency=[4, 16, 64],
        num_requests=per_level,
        warmup=4,
        input_len="16",
        output_len="32",
        slo=SLO(ttft_ms=50, tpot_ms=5),
    )
    with stub_process(ttft_s=0.02, itl_s=0.002) as url:
        return run_bench(config, OpenAITarget(url), progress=False).to_dict()


def load_times(page: Path, repeats: int) -> tuple[list[float], list[float]]:
    loads, walls = [], []
    with HeadlessChromium() as browser:
        browser.load(page)  # first load warms the browser's caches of fonts and code
        for _ in range(repeats):
            got = browser.load(page)
            loads.append(got.load_ms)
            walls.append(got.wall_ms)
            assert got.console_errors == [], got.console_errors
    return loads, walls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--keep", type=Path, default=None, help="Also write the report here.")
    a = p.parse_args()
    start = time.perf_counter()
    result = measure_run(a.requests)
    measured_s = time.perf_counter() - start
    run = Run(info=RunInfo(id=None, kind="bench", name="10k"), result=result, where="10k")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.html"
        start = time.perf_counter()
        write_report([run], report)
        write_s = time.perf_counter() - start
        blank = Path(tmp) / "blank.html"
        blank.write_text("<!doctype html><html><body>blank</body></html>\n")
        base_load, base_wall = load_times(blank, a.repeats)
        loads, walls = load_times(report, a.repeats)
        if a.keep:
            a.keep.write_bytes(report.read_bytes())
        size_kb = report.stat().st_size / 1024
    n = sum(len(lv["records"]) for lv in result["levels"])
    med = statistics.median
    figures = {
        "requests": n,
        "measure_s": round(measured_s, 1),
        "write_report_s": round(write_s, 2),
        "report_kb": round(size_kb),
        "load_ms_median": round(med(loads), 1),
        "wall_ms_median": round(med(walls), 1),
        "blank_load_ms_median": round(med(base_load), 1),
        "blank_wall_ms_median": round(med(base_wall), 1),
        "repeats": a.repeats,
        "load_average": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(figures, indent=2))
    print(
        f"report of {n:,} requests ({size_kb:,.0f} KB): load event at {med(loads):.0f} ms "
        f"(blank page {med(base_load):.0f} ms), {med(walls):.0f} ms wall; median of {a.repeats}"
    )


if __name__ == "__main__":
    main()
