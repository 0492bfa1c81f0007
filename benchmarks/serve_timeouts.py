"""When do 800 half-sent requests stall latlab serve: on arrival, or when they time out?

Opens N connections at once against a server started with short timeouts (half send an
unfinished request head, half a complete head and an unfinished body), then times
``GET /health`` every 10 ms until the bodies have timed out. Figures: /health's slowest
answer in each phase (the connections arriving, the heads timing out, the bodies timing out)
and the median over the whole run (the quiet reference of the same run). serve_hostile.py
gives one number for the whole scenario; this one says which moment costs what.

Anchor (``--anchor-ref``): latlab serve at an older commit, run in the same invocation,
alternating with this tree's server repeat by repeat.

    nice -n 10 .venv/bin/python benchmarks/serve_timeouts.py --repeats 3 --anchor-ref b181104 \\
        --json benchmarks/results/serve_timeouts.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_hostile import REPO, checkout, half_sent, server


def one_run(base: str, args: argparse.Namespace) -> dict[str, float]:
    """/health latencies (ms) per phase, timed from the moment the sockets start opening."""
    phases = {
        "arrival": (0.0, 1.0),
        "heads time out": (args.header_timeout - 0.2, args.header_timeout + 1.0),
        "bodies time out": (args.body_timeout - 0.2, args.body_timeout + 1.0),
    }
    samples: list[tuple[float, float]] = []
    with httpx.Client(timeout=60) as client:
        client.get(f"{base}/health")
        start = time.perf_counter()
        with half_sent(base, args.connections // 2):
            while (now := time.perf_counter()) - start < args.body_timeout + 1.2:
                client.get(f"{base}/health")
                samples.append((now - start, 1000 * (time.perf_counter() - now)))
                time.sleep(0.01)
    row = {
        name: max(ms for at, ms in samples if low <= at < high)
        for name, (low, high) in phases.items()
    }
    row["median"] = statistics.median(ms for _, ms in samples)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=800)
    parser.add_argument("--header-timeout", type=float, default=3.0)
    parser.add_argument("--body-timeout", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--anchor-ref", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    flags = [f"--header-timeout={args.header_timeout}", f"--body-timeout={args.body_timeout}"]
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"latlab": [], "anchor": []}
    with contextlib.ExitStack() as stack:
        sides = {"latlab": stack.enter_context(server(REPO / "src", None, "latlab", flags))}
        if args.anchor_ref:
            src = stack.enter_context(checkout(args.anchor_ref))
            sides["anchor"] = stack.enter_context(server(src, None, "anchor", flags))
        for repeat in range(args.repeats):
            for label, (base, _pid) in sides.items():
                runs[label].append(one_run(base, args))
                print(f"  {label} repeat {repeat + 1}: {runs[label][-1]}", flush=True)
    summary = {
        label: {key: round(statistics.median(r[key] for r in rows), 1) for key in rows[0]}
        for label, rows in runs.items()
        if rows
    }
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"\n/health slowest answer per phase, ms (median of {args.repeats} repeats)")
    for label, row in summary.items():
        print(f"  {label:8} " + "  ".join(f"{k}: {v}" for k, v in row.items()))
    print(f"load average before {load['before']}, after {load['after']}")
    if args.json:
        result = {"runs": runs, "summary": summary, "load": load}
        result["args"] = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
