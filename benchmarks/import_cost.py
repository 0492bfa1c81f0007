"""Import cost of the base package and of each verb's library, median of repeated cold starts.

    .venv/bin/python benchmarks/import_cost.py

The anchor is the interpreter's own start-up (`python -c pass`), measured in the same run, so
the figure that matters is the difference.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

REPEATS = 7
MODULES = ["latlab", "latlab.cli", "latlab.metrics", "latlab.bench.runner", "latlab.plan"]


def cold_start_seconds(code: str) -> float:
    """Median wall time of running ``code`` in a fresh interpreter."""
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    baseline = cold_start_seconds("pass")
    print(f"python -c pass: {baseline * 1000:.0f} ms (median of {REPEATS})")
    for module in MODULES:
        try:
            total = cold_start_seconds(f"import {module}")
        except subprocess.CalledProcessError:
            print(f"{module:24s} not importable here")
            continue
        print(f"import {module:24s} +{(total - baseline) * 1000:6.0f} ms over the interpreter")


if __name__ == "__main__":
    main()
