"""What `latlab watch` costs the server it watches: requests/s and server CPU, idle vs probed.

The same `latlab serve` (bundled model) is measured alternately idle and under a running
`latlab watch` (A/B interleaved, medians of the repeats), and once under back-to-back load at
concurrency 1 (`latlab bench`), the anchor: what one stream of the same requests can take from
this server at most. CPU is the server process's utime+stime from /proc (all its threads).

    nice .venv/bin/python benchmarks/watch_cost.py --seconds 60 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from latlab.procs import ManagedProcess, ProcessSpec, free_port

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def latlab(name: str, args: list[str], log_dir: Path) -> ManagedProcess:
    spec = ProcessSpec(argv=[sys.executable, "-c", CLI, *args], name=name,
                       log_path=log_dir / f"{name}.log")  # fmt: skip
    return ManagedProcess(spec).start()


def server_counter(url: str) -> float:
    """Requests the server finished (latlab:request_success_total, all reasons)."""
    from latlab.monitor.scrape import fetch

    return fetch(f"{url}/metrics").total("latlab:request_success_total") or 0.0


def window(server: ManagedProcess, url: str, seconds: float) -> dict[str, float]:
    """Server CPU %, and requests/s it finished, over ``seconds``."""
    c0, r0, t0 = cpu_s(server.pid), server_counter(url), time.perf_counter()
    time.sleep(seconds)
    c1, r1, t1 = cpu_s(server.pid), server_counter(url), time.perf_counter()
    return {"cpu_pct": 100 * (c1 - c0) / (t1 - t0), "rps": (r1 - r0) / (t1 - t0)}


def probed(server: ManagedProcess, url: str, args: argparse.Namespace, log: Path) -> dict:
    watch = latlab("watch", ["watch", f"{url}/v1", "--interval", args.interval, "--no-metrics",
                             "--max-tokens", str(args.max_tokens), "--prompt-tokens",
                             str(args.prompt_tokens), "--window", "5m"], log)  # fmt: skip
    try:
        time.sleep(3)  # the watch's own start-up is not the steady state
        w0 = cpu_s(watch.pid)
        got = window(server, url, args.seconds)
        got["watch_cpu_pct"] = 100 * (cpu_s(watch.pid) - w0) / args.seconds
        return got
    finally:
        watch.stop()


def capacity(server: ManagedProcess, url: str, args: argparse.Namespace, log: Path) -> dict:
    """Requests/s and server CPU % at concurrency 1, back to back: the anchor."""
    out = log / "bench.json"
    argv = ["bench", "--url", f"{url}/v1", "--concurrency", "1", "--duration", "20",
            "--num-requests", "100000", "--input-len", str(args.prompt_tokens),
            "--output-len", str(args.max_tokens), "--json", str(out), "--no-progress"]  # fmt: skip
    c0, t0 = cpu_s(server.pid), time.perf_counter()
    bench = latlab("bench", argv, log)
    bench.proc.wait(timeout=600)
    cpu_pct = 100 * (cpu_s(server.pid) - c0) / (time.perf_counter() - t0)
    rps = float(json.loads(out.read_text())["levels"][0]["summary"]["requests_per_s"])
    return {"rps": rps, "cpu_pct": cpu_pct}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="each idle / probed window")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--interval", default="10s", help="the watch's --interval (its default)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = p.parse_args()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "latlab-watch-cost"
    log.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = latlab("serve", ["serve", "--port", str(port), "--threads", "1"], log)
    try:
        server.wait_http(f"{url}/health", timeout_s=300)
        idle, watched = [], []
        for i in range(args.repeats):  # A/B interleaved
            idle.append(window(server, url, args.seconds))
            watched.append(probed(server, url, args, log))
            print(f"repeat {i + 1}: idle {idle[-1]}, probed {watched[-1]}", flush=True)
        anchor = capacity(server, url, args, log)
    finally:
        server.stop()
    report(idle, watched, anchor, args)


def report(idle: list[dict], watched: list[dict], anchor: dict, args: argparse.Namespace) -> None:
    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    figures = {
        "interval": args.interval, "seconds": args.seconds, "repeats": args.repeats,
        "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
        "idle_cpu_pct": med(idle, "cpu_pct"), "probed_cpu_pct": med(watched, "cpu_pct"),
        "probe_rps": med(watched, "rps"), "watch_cpu_pct": med(watched, "watch_cpu_pct"),
        "stream_rps_concurrency_1": anchor["rps"],
        "stream_cpu_pct_concurrency_1": anchor["cpu_pct"], "load": os.getloadavg(),
        "idle": idle, "probed": watched,
    }  # fmt: skip
    added = figures["probed_cpu_pct"] - figures["idle_cpu_pct"]
    print(
        f"\nlatlab watch --interval {args.interval} ({args.prompt_tokens}-token prompts, "
        f"{args.max_tokens} tokens out), medians of {args.repeats} x {args.seconds:g} s:"
    )
    print(
        f"  probe rate            {figures['probe_rps']:.3f} requests/s "
        f"({figures['probe_rps'] / anchor['rps']:.2%} of the {anchor['rps']:.2f} requests/s "
        f"one back-to-back stream gets from this server, at {anchor['cpu_pct']:.0f}% CPU)"
    )
    print(
        f"  server CPU            {figures['idle_cpu_pct']:.2f}% idle -> "
        f"{figures['probed_cpu_pct']:.2f}% probed (+{added:.2f} points of one core)"
    )
    print(f"  the watch's own CPU   {figures['watch_cpu_pct']:.2f}% of one core")
    print(f"  load average          {figures['load'][0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
