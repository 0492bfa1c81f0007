"""How truthful is each benchmark client? latlab bench vs `vllm bench serve`, aiperf, guidellm.

All the clients measure the same deterministic stub server (``latlab.testing.stub_server``:
TTFT 50 ms, then 64 one-token chunks 10 ms apart), in turn, at each concurrency level. The
server records its own time from reading a request to writing its first chunk; whatever a
client reports above that figure is the client's own overhead showing up as latency. The
clients and the server share this machine's cores, as they would in practice.

    nice -n 10 .venv/bin/python benchmarks/client_accuracy.py \
        --levels 1,64,256 --tools latlab,vllm,aiperf,guidellm --repeats 1 \
        --out benchmarks/anchors/results/client_accuracy_$(date -u +%F).json

Needs the anchor venvs from ``benchmarks/anchors/install.sh`` (a tool whose venv is missing is
skipped with a note). Per tool and level it records TTFT p50/p99 and ITL p50 as the tool reports
them, the server's own first-chunk p50/p99 over the same requests, and the client process's CPU
seconds per 1,000 streamed tokens (whole process tree, start-up included; for latlab also the
figure its runner reports for its event-loop thread alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from latlab.procs import ManagedProcess, ProcessSpec, run_to_completion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_anchor import anchor_python, missing_note

REPO = Path(__file__).resolve().parents[1]
PY = REPO / ".venv" / "bin" / "python"
LATLAB = REPO / ".venv" / "bin" / "latlab"
VLLM_PY = anchor_python()
AIPERF = Path("/tmp/aiperf-venv/bin/aiperf")
GUIDELLM = Path("/tmp/guidellm-venv/bin/guidellm")
SHIM = REPO / "benchmarks" / "anchors" / "vllm_shim.py"
TOKENIZER = REPO / "src" / "latlab" / "assets" / "tiny-llama"
TTFT_MS, ITL_MS, CHUNKS = 50.0, 10.0, 64
INPUT_LEN = 32
GOAL_MS = {1: 2.0, 64: 5.0, 256: 10.0}  # latlab TTFT p50 vs the server's own p50
DEFAULT_REQUESTS = {1: 30, 64: 256, 256: 768}


@dataclass(slots=True)
class ToolRun:
    tool: str
    concurrency: int
    requests: int
    ok: bool
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    itl_p50: float | None = None
    completed: int | None = None
    server_first_chunk_p50: float | None = None
    server_first_chunk_p99: float | None = None
    server_requests: int | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cpu_s_per_1k_tokens: float | None = None
    net_cpu_s_per_1k_tokens: float | None = None  # minus the tool's 1-request run
    loop_cpu_s_per_1k_tokens: float | None = None  # latlab's own figure (loop thread)
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ttft_excess_ms(self) -> float | None:
        if self.ttft_p50 is None or self.server_first_chunk_p50 is None:
            return None
        return self.ttft_p50 - self.server_first_chunk_p50


# -- the stub server -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stub(port: int) -> ManagedProcess:
    """The stub server in its own process group (stopped whole, also on Ctrl-C)."""
    cmd = [str(PY), "-m", "latlab.testing.stub_server", "--port", str(port),
           "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS), "--chunks", str(CHUNKS)]  # fmt: skip
    proc = ManagedProcess(ProcessSpec(argv=cmd, name="stub-server")).start()
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=60)
    except BaseException:
        proc.stop()
        raise
    return proc


def stub_call(port: int, path: str, method: str = "GET") -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=b"" if method == "POST" else None)  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), q in 0..100."""
    if not values:
        return None
    vals = sorted(values)
    pos = (len(vals) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


# -- running a client with its CPU cost ------------------------------------------------------


def run_measured(cmd: list[str], log: Path, timeout: float) -> tuple[int, float, float]:
    """Run ``cmd``; return (exit code, wall s, CPU s of it and its reaped descendants)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # Its own process group, stopped whole on timeout or Ctrl-C (a tool's workers included).
    rc = run_to_completion(ProcessSpec(argv=cmd, log_path=log), timeout_s=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rc, wall, cpu


def latlab_cmd(url: str, c: int, n: int, out: Path) -> list[str]:
    return [str(LATLAB), "bench", "--url", url, "--concurrency", str(c), "--num-requests", str(n),
            "--warmup", "0", "--input-len", str(INPUT_LEN), "--output-len", str(CHUNKS),
            "--tokenizer", str(TOKENIZER), "--json", str(out), "--no-progress"]  # fmt: skip


def parse_latlab(out: Path, run: ToolRun) -> None:
    level = json.loads(out.read_text())["levels"][0]
    s = level["summary"]
    run.ttft_p50, run.ttft_p99 = s["ttft_ms"]["p50"], s["ttft_ms"]["p99"]
    run.itl_p50 = s["itl_ms"]["p50"]
    run.completed = s["completed"]
    run.loop_cpu_s_per_1k_tokens = level["client"]["cpu_s_per_1k_tokens"]
    run.extra = {"client_check": {k: level["client"][k] for k in ("cpu_util", "client_bound",
                                                                  "reasons")}}  # fmt: skip


def vllm_cmd(port: int, c: int, n: int, out: Path) -> list[str]:
    return [str(VLLM_PY), str(SHIM), "bench", "serve", "--backend", "openai",
            "--base-url", f"http://127.0.0.1:{port}", "--endpoint", "/v1/completions",
            "--model", "stub-model", "--tokenizer", str(TOKENIZER), "--dataset-name", "random",
            "--random-input-len", str(INPUT_LEN), "--random-output-len", str(CHUNKS),
            "--num-prompts", str(n), "--max-concurrency", str(c), "--ignore-eos",
            "--percentile-metrics", "ttft,itl,tpot,e2el", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name,
            "--disable-tqdm", "--seed", "0"]  # fmt: skip


def parse_vllm(out: Path, run: ToolRun) -> None:
    d = json.loads(out.read_text())
    run.ttft_p50, run.ttft_p99 = d["median_ttft_ms"], d["p99_ttft_ms"]
    run.itl_p50 = d["median_itl_ms"]
    run.completed = d["completed"]


def aiperf_cmd(port: int, c: int, n: int, out: Path) -> list[str]:
    # --use-server-token-count: the stub's words are not one token each in our tokenizer, and
    # aiperf's per-token ITL would otherwise be off by that factor (benchmarks.md).
    return [str(AIPERF), "profile", "--model", "stub-model", "--url", f"http://127.0.0.1:{port}",
            "--endpoint-type", "completions", "--streaming", "--concurrency", str(c),
            "--request-count", str(n), "--isl", str(INPUT_LEN), "--osl", str(CHUNKS),
            "--tokenizer", str(TOKENIZER), "--use-server-token-count",
            "--extra-inputs", "ignore_eos:true", "--ui-type", "none",
            "--artifact-dir", str(out)]  # fmt: skip


def parse_aiperf(out: Path, run: ToolRun) -> None:
    d = json.loads((out / "profile_export_aiperf.json").read_text())
    run.ttft_p50, run.ttft_p99 = d["time_to_first_token"]["p50"], d["time_to_first_token"]["p99"]
    run.itl_p50 = d["inter_token_latency"]["p50"]
    run.completed = int(d["request_count"]["avg"])
    if "inter_chunk_latency" in d:
        run.extra = {"inter_chunk_latency_p50": d["inter_chunk_latency"]["p50"]}


def guidellm_cmd(port: int, c: int, n: int, out: Path) -> list[str]:
    return [str(GUIDELLM), "run", "--backend", f"kind=openai_http,target=http://127.0.0.1:{port}",
            "--profile", f"kind=concurrent,streams={c}",
            "--constraint", f"kind=max_requests,count={n}",
            "--tokenizer", f"kind=hf_auto,model={TOKENIZER}",
            "--data", f"kind=synthetic_text,prompt_tokens={INPUT_LEN},output_tokens={CHUNKS}",
            "--output", f"kind=json,path={out}", "--disable-progress"]  # fmt: skip


def parse_guidellm(out: Path, run: ToolRun) -> None:
    m = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    ttft = m["time_to_first_token_ms"]["successful"]["percentiles"]
    run.ttft_p50, run.ttft_p99 = ttft["p50"], ttft["p99"]
    run.itl_p50 = m["inter_token_latency_ms"]["successful"]["percentiles"]["p50"]
    run.completed = m["request_totals"]["successful"]


TOOLS = {
    "latlab": (lambda port, c, n, out: latlab_cmd(f"http://127.0.0.1:{port}/v1", c, n, out),
               parse_latlab, "latlab.json", LATLAB),
    # latlab with two client processes sharing the level (its --workers), for many streams
    "latlab-w2": (lambda port, c, n, out: [*latlab_cmd(f"http://127.0.0.1:{port}/v1", c, n, out),
                                           "--workers", "2"], parse_latlab, "latlab.json", LATLAB),
    "vllm": (vllm_cmd, parse_vllm, "vllm.json", VLLM_PY),
    "aiperf": (aiperf_cmd, parse_aiperf, "aiperf", AIPERF),
    "guidellm": (guidellm_cmd, parse_guidellm, "guidellm.json", GUIDELLM),
}  # fmt: skip


def run_tool(tool: str, port: int, c: int, n: int, workdir: Path, timeout: float) -> ToolRun:
    make_cmd, parse, out_name, exe = TOOLS[tool]
    run = ToolRun(tool=tool, concurrency=c, requests=n, ok=False)
    if not exe.exists():
        install = f"{exe} missing: run benchmarks/anchors/install.sh"
        run.note = missing_note(exe) if exe == VLLM_PY else install
        return run
    out = workdir / f"{tool}-c{c}-{time.monotonic_ns()}-{out_name}"
    log = out.with_suffix(".log")
    stub_call(port, "/stub/reset", "POST")
    rc, run.wall_s, run.cpu_s = run_measured(make_cmd(port, c, n, out), log, timeout)
    stats = stub_call(port, "/stub/stats")
    fc = stats["first_chunk_ms"]
    run.server_requests = stats["requests"]
    run.server_first_chunk_p50, run.server_first_chunk_p99 = percentile(fc, 50), percentile(fc, 99)
    try:
        parse(out, run)
        run.ok = rc == 0
    except (OSError, KeyError, ValueError) as e:
        run.note = f"exit {rc}; no result ({type(e).__name__}: {e}); log {log}"
    if not run.ok and not run.note:
        run.note = f"exit {rc}; log {log}"
    tokens = (run.completed or 0) * CHUNKS
    if tokens:
        run.cpu_s_per_1k_tokens = run.cpu_s / tokens * 1000
    return run


def net_cpu(run: ToolRun, baseline: ToolRun) -> None:
    """CPU per 1k tokens beyond what a one-request run of the same tool costs (start-up)."""
    tokens = (run.completed or 0) * CHUNKS - (baseline.completed or 0) * CHUNKS
    if baseline.ok and run.ok and tokens > 0:
        run.net_cpu_s_per_1k_tokens = max(run.cpu_s - baseline.cpu_s, 0.0) / tokens * 1000


# -- report ----------------------------------------------------------------------------------


def fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def table(runs: list[ToolRun]) -> str:
    head = (
        "| tool | streams | requests | TTFT p50 | TTFT p99 | ITL p50 | server 1st chunk p50 "
        "(p99) | TTFT p50 - server p50 | client CPU s / 1k tok (net of start-up) |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in runs:
        cpu = f"{fmt(r.cpu_s_per_1k_tokens, 3)} ({fmt(r.net_cpu_s_per_1k_tokens, 3)})"
        if r.loop_cpu_s_per_1k_tokens is not None:
            cpu += f" (loop {r.loop_cpu_s_per_1k_tokens:.3f})"
        lines.append(
            f"| {r.tool} | {r.concurrency} | {r.completed or 0}/{r.requests} | {fmt(r.ttft_p50)} "
            f"| {fmt(r.ttft_p99)} | {fmt(r.itl_p50, 2)} | {fmt(r.server_first_chunk_p50)} "
            f"({fmt(r.server_first_chunk_p99)}) | {fmt(r.ttft_excess_ms)} | {cpu} |"
            + (f" {r.note}" if r.note else "")
        )
    return "\n".join(lines)


def medians(runs: list[ToolRun]) -> list[dict]:
    """Per tool and level: the median over repeats of each figure."""
    keys = (
        "ttft_p50", "ttft_p99", "itl_p50", "server_first_chunk_p50", "ttft_excess_ms",
        "cpu_s_per_1k_tokens", "net_cpu_s_per_1k_tokens", "loop_cpu_s_per_1k_tokens",
    )  # fmt: skip
    groups: dict[tuple[str, int], list[ToolRun]] = {}
    for r in runs:
        groups.setdefault((r.tool, r.concurrency), []).append(r)
    out = []
    for (tool, c), rs in groups.items():
        row: dict = {"tool": tool, "concurrency": c, "repeats": len(rs)}
        for k in keys:
            vals = [getattr(r, k) for r in rs if r.ok and getattr(r, k) is not None]
            row[k] = statistics.median(vals) if vals else None
        if tool.startswith("latlab") and c in GOAL_MS and row["ttft_excess_ms"] is not None:
            row["goal_ms"] = GOAL_MS[c]
            row["meets_goal"] = abs(row["ttft_excess_ms"]) <= GOAL_MS[c]
        out.append(row)
    return out


def parse_requests(spec: str | None, levels: list[int]) -> dict[int, int]:
    counts = {c: DEFAULT_REQUESTS.get(c, max(4 * c, 30)) for c in levels}
    for part in (spec or "").split(","):
        if part:
            c, n = part.split("=")
            counts[int(c)] = int(n)
    return counts


def latlab_revision() -> dict:
    """Which latlab client was measured: HEAD and whether the bench files differ from it."""

    def git(*a: str) -> str:
        res = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)
        return res.stdout.strip()

    dirty = git("status", "--porcelain", "--", "src/latlab/bench", "src/latlab/metrics.py")
    return {"head": git("rev-parse", "--short", "HEAD"), "bench_files_uncommitted": dirty}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="1,64,256")
    p.add_argument("--tools", default="latlab,vllm,aiperf,guidellm")
    p.add_argument("--requests", default=None, help="per level, e.g. 1=30,64=256,256=768")
    p.add_argument("--repeats", type=int, default=1, help="tools interleaved within each repeat")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per tool run")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=None, help="keep tool outputs/logs here")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    tools = [t for t in args.tools.split(",") if t]
    for t in tools:
        if t not in TOOLS:
            p.error(f"unknown tool {t!r}; choose from {', '.join(TOOLS)}")
    counts = parse_requests(args.requests, levels)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="client-accuracy-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stub = start_stub(port)
    runs: list[ToolRun] = []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load0 = os.getloadavg()
    baselines: dict[str, ToolRun] = {}
    try:
        for tool in tools:  # start-up cost: one request, so the per-token CPU can be netted
            baselines[tool] = run_tool(tool, port, 1, 1, workdir, args.timeout)
        for rep in range(args.repeats):
            for c in levels:
                for tool in tools if rep % 2 == 0 else list(reversed(tools)):
                    r = run_tool(tool, port, c, counts[c], workdir, args.timeout)
                    net_cpu(r, baselines[tool])
                    runs.append(r)
                    print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
    finally:
        stub.stop()
    result = {
        "benchmark": "client_accuracy",
        "date_utc": started,
        "truth": {"ttft_ms": TTFT_MS, "itl_ms": ITL_MS, "chunks": CHUNKS, "tokens_per_chunk": 1},
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                    "note": "2 cores shared with the stub server and other engineers' jobs"},
        "latlab_revision": latlab_revision(),
        "command": " ".join(["benchmarks/client_accuracy.py", *(argv or sys.argv[1:])]),
        "startup_baselines": {t: asdict(b) for t, b in baselines.items()},
        "medians": medians(runs),
        "runs": [asdict(r) | {"ttft_excess_ms": r.ttft_excess_ms} for r in runs],
    }  # fmt: skip
    print(table(runs))
    print(json.dumps(result["medians"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
