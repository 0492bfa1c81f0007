"""What the preparation process (latlab.serve.prep) adds to `latlab serve`'s start-up.

Launches `latlab serve` (bundled model) a few times and reads, per launch: when the ready line
came and what it says, when the child said it was ready (spawn + tokenizer load), the child's
CPU time and RSS, and the server's RSS.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/serve_prep_startup.py \\
        --json benchmarks/results/serve_prep_startup_2026-11-30.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from latlab.procs import ManagedProcess, ProcessSpec, free_port

REPO = Path(__file__).resolve().parents[1]
_CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def launch(index: int) -> dict:
    """One launch, measured."""
    argv = [sys.executable, "-c", _CLI, "serve", "--port", str(free_port())]
    spec = ProcessSpec(argv=argv, name=f"serve-{index}", env={"PYTHONPATH": str(REPO / "src")})
    with ManagedProcess(spec) as proc:
        ready_s = proc.wait_ready(lambda: "ready at" in proc.log_tail(50), timeout_s=180)
        prep_s = proc.wait_ready(
            lambda: "preparation process ready" in proc.log_tail(50), timeout_s=180
        )
        log = proc.log_tail(50)
        child = re.search(r"preparation process ready \(pid (\d+), ([\d.]+) s", log)
        assert child is not None and proc.pid is not None
        pid = int(child.group(1))
        return {
            "ready_line_s": float(re.search(r"up in ([\d.]+) s", log).group(1)),  # type: ignore[union-attr]
            "ready_seen_s": ready_s,
            "prep_ready_seen_s": prep_s,
            "child_reported_s": float(child.group(2)),
            "child_rss_mb": _rss_mb(pid),
            "child_cpu_s": _cpu_s(pid),
            "server_rss_mb": _rss_mb(proc.pid),
            "load": os.getloadavg(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for index in range(args.launches):
        rows.append(launch(index))
        print(rows[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
