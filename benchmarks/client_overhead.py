"""How truthful and how light is latlab's HTTP client? Figures against the server's own clock.

Starts the deterministic stub server in its own process (TTFT 50 ms, then 64 one-token chunks
10 ms apart), runs latlab's OpenAI client against it at several concurrencies, and prints for
each: the client's TTFT p50/p99, the server's own read-to-first-chunk time p50/p99 in the same
run (the anchor), the difference, the client's ITL and chunk-gap p50, and the client's CPU
seconds per 1,000 streamed tokens. Each level is repeated; medians of the repeats are shown.

    .venv/bin/python benchmarks/client_overhead.py [--concurrency 1,64,256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request

from latlab.bench import BenchConfig, OpenAITarget, run_bench
from latlab.metrics import Stats


def start_stub(ttft_ms: float, itl_ms: float, chunks: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "latlab.testing.stub_server", "--port", "0",
           "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), "--chunks", str(chunks)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "ready at" not in line:
        proc.kill()
        raise SystemExit(f"stub server did not start: {line!r}")
    return proc, line.split(" at ")[1].strip()


def stub_call(url: str, path: str, method: str = "GET") -> dict:
    req = urllib.request.Request(url.removesuffix("/v1") + path, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def cpu_s() -> float:
    """This process plus finished children (client workers are joined when a run ends)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of another process (the stub server), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(url: str, c: int, n: int, chunks: int, server_pid: int, workers: int) -> dict:
    stub_call(url, "/stub/reset", "POST")
    config = BenchConfig(concurrency=[c], num_requests=n, warmup=0, input_len="32",
                         output_len=str(chunks), workers=min(workers, c))  # fmt: skip
    cpu0, srv0 = cpu_s(), proc_cpu_s(server_pid)
    ctx0, wall0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw, time.perf_counter()
    level = run_bench(config, OpenAITarget(url), progress=False).levels[0]
    used, srv_used = cpu_s() - cpu0, proc_cpu_s(server_pid) - srv0
    preempted = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - ctx0
    wall = time.perf_counter() - wall0
    stats = stub_call(url, "/stub/stats")
    server = Stats.of(stats["first_chunk_ms"])
    # One clock (CLOCK_MONOTONIC) in both processes: split each TTFT into request path
    # (client send -> server read), server time, and response path (write -> client stamp).
    pairs = {rid: (r, w) for rid, r, w in stats["first_chunk_ns"]}
    hops = [(pairs[x.request_id][0] - x.send_ns, x.chunk_ns[0] - pairs[x.request_id][1])
            for x in level.records if x.ok and x.request_id in pairs]  # fmt: skip
    s = level.summary
    return {
        "ttft_p50": s.ttft_ms.p50, "ttft_p99": s.ttft_ms.p99,
        "server_p50": server.p50, "server_p99": server.p99,
        "itl_p50": s.itl_ms.p50, "gap_p50": s.chunk_gap_ms.p50,
        "cpu_per_1k": used / s.output_tokens * 1000 if s.output_tokens else float("nan"),
        "srv_cpu_per_1k": srv_used / s.output_tokens * 1000 if s.output_tokens else float("nan"),
        "loop_util": level.client.cpu_util,
        "loop_lag_p90": level.client.loop_lag_ms.p90 or 0.0,
        "preempt_per_s": preempted / wall,
        "req_path_p50": statistics.median(h[0] for h in hops) / 1e6 if hops else float("nan"),
        "resp_path_p50": statistics.median(h[1] for h in hops) / 1e6 if hops else float("nan"),
        "bound": level.client.client_bound, "failed": s.failed,
    }  # fmt: skip


def print_row(c: int, w: int, runs: list[dict]) -> None:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "bound"}
    bound = sum(r["bound"] for r in runs)
    print(
        f"| {c} | {w} | {med['ttft_p50']:.1f} | {med['ttft_p99']:.1f} | "
        f"{med['server_p50']:.1f} | {med['server_p99']:.1f} | "
        f"{med['ttft_p50'] - med['server_p50']:+.1f} | {med['itl_p50']:.2f} | "
        f"{med['gap_p50']:.2f} | {med['cpu_per_1k']:.4f} | "
        f"{med['srv_cpu_per_1k']:.4f} | {med['loop_util']:.0%} | "
        f"{med['loop_lag_p90']:.1f} | {med['preempt_per_s']:.0f} | "
        f"{med['req_path_p50']:.2f} | {med['resp_path_p50']:.2f} | "
        f"{bound}/{len(runs)} |",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,64,256")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", default="1", help="client processes to compare, e.g. 1,2")
    p.add_argument("--requests-per-user", type=int, default=3)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--chunks", type=int, default=64)
    a = p.parse_args()
    proc, url = start_stub(a.ttft_ms, a.itl_ms, a.chunks)
    print(f"stub: {url} TTFT {a.ttft_ms:g} ms, {a.chunks} chunks {a.itl_ms:g} ms apart; "
          f"{os.cpu_count()} cores; client and server share them")  # fmt: skip
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    hdr = ("streams", "workers", "TTFT p50", "p99", "server p50", "p99", "diff p50", "ITL p50",
           "gap p50", "client CPU s/1k tok", "server CPU s/1k tok", "client loop CPU",
           "loop lag p90", "preempted /s", "send→read p50", "write→stamp p50", "bound")  # fmt: skip
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    try:
        one_run(url, 1, 2, a.chunks, proc.pid, 1)
        worker_counts = [int(x) for x in a.workers.split(",")]
        for c in (int(x) for x in a.concurrency.split(",")):
            n = max(10, c * a.requests_per_user)
            runs: dict[int, list[dict]] = {w: [] for w in worker_counts}
            for _ in range(a.repeats):  # interleaved: w1 w2 w1 w2 ...
                for w in worker_counts:
                    runs[w].append(one_run(url, c, n, a.chunks, proc.pid, w))
                    time.sleep(0.3)
            for w, rs in runs.items():
                print_row(c, w, rs)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
