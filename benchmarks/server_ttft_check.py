"""How far each client's TTFT is from the server's own TTFT histogram, over the same requests.

The server (``latlab serve`` or ``vllm serve``, started here with prefix caching on or off) keeps
a TTFT histogram (``latlab:`` / ``vllm:time_to_first_token_seconds``). Before and after each
client run this script reads the histogram's ``_sum`` and ``_count``: their difference is the
server's mean TTFT over exactly that run's requests. A client's own mean TTFT minus it is what
the client adds (its send path, its receive loop, the loopback network) or, when the server
stamps its start late, what the server's clock misses. The prefix-cache counters are read the
same way, so a run that reused cached prompts shows it.

    nice -n 10 .venv/bin/python benchmarks/server_ttft_check.py --server vllm \\
        --prefix-caching on --out benchmarks/results/server_ttft_check_vllm_on_$(date -u +%F).json
    nice -n 10 .venv/bin/python benchmarks/server_ttft_check.py --server latlab \\
        --out benchmarks/results/server_ttft_check_latlab_$(date -u +%F).json

Clients: ``latlab bench`` (this checkout) and ``vllm bench serve`` (vLLM CPU 0.32.0 through
``benchmarks/anchors/vllm_shim.py``), interleaved (order reversed on alternate repeats), each
run with its own seed so neither re-sends an earlier run's prompts. Workload: random prompts of
``--input-len`` tokens, ``--output-len`` tokens out (ignore_eos), no warm-up requests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client_accuracy import latlab_revision, run_measured
from vllm_anchor import anchor_python, missing_note

REPO = Path(__file__).resolve().parents[1]
LATLAB = REPO / ".venv" / "bin" / "latlab"
VLLM_PY = anchor_python()
SHIM = REPO / "benchmarks" / "anchors" / "vllm_shim.py"
BUNDLED = REPO / "src" / "latlab" / "assets" / "tiny-llama"
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


@dataclass(slots=True)
class Run:
    server: str
    prefix_caching: bool
    client: str
    streams: int
    requests: int
    seed: int
    ok: bool = False
    completed: int | None = None
    client_ttft_mean: float | None = None
    client_ttft_p50: float | None = None
    server_ttft_mean: float | None = None
    server_requests: int | None = None
    server_queue_mean: float | None = None
    cache_hit_rate: float | None = None  # server counters: hits / queries over the run
    prompt_tokens_mean: float | None = None  # server counters: prompt tokens / requests
    wall_s: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def diff_ms(self) -> float | None:
        if self.client_ttft_mean is None or self.server_ttft_mean is None:
            return None
        return self.client_ttft_mean - self.server_ttft_mean


# -- the server's own figures ----------------------------------------------------------------


def scrape(base: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, summed over label sets, by metric name."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(base + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m and not line.startswith("#"):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def delta(before: dict[str, float], after: dict[str, float], *names: str) -> float | None:
    """The first of ``names`` present in both scrapes, after minus before."""
    for name in names:
        if name in before or name in after:
            return after.get(name, 0.0) - before.get(name, 0.0)
    return None


def server_figures(prefix: str, before: dict, after: dict, run: Run) -> None:
    count = delta(before, after, f"{prefix}:time_to_first_token_seconds_count")
    total = delta(before, after, f"{prefix}:time_to_first_token_seconds_sum")
    if count:
        run.server_requests = round(count)
        run.server_ttft_mean = (total or 0.0) / count * 1000
    q_count = delta(before, after, f"{prefix}:request_queue_time_seconds_count")
    q_sum = delta(before, after, f"{prefix}:request_queue_time_seconds_sum")
    if q_count:
        run.server_queue_mean = (q_sum or 0.0) / q_count * 1000
    queries = delta(before, after, f"{prefix}:prefix_cache_queries_total",
                    f"{prefix}:prefix_cache_queries")  # fmt: skip
    hits = delta(before, after, f"{prefix}:prefix_cache_hits_total", f"{prefix}:prefix_cache_hits")
    if queries:
        run.cache_hit_rate = (hits or 0.0) / queries
    prompt = delta(before, after, f"{prefix}:prompt_tokens_total", f"{prefix}:prompt_tokens")
    if prompt and count:
        run.prompt_tokens_mean = prompt / count


# -- servers ----------------------------------------------------------------------------------


def start_server(
    kind: str, model: Path, prefix_caching: bool, port: int, logdir: Path, start_timeout: float
):
    from latlab.procs import ManagedProcess, ProcessSpec

    if kind == "latlab":
        argv = [str(LATLAB), "serve", str(model), "--port", str(port), "--dtype", "float32"]
        argv += [] if prefix_caching else ["--no-prefix-caching"]
        env: dict[str, str] = {}
    else:
        argv = [str(VLLM_PY), str(SHIM), "serve", str(model), "--port", str(port),
                "--dtype", "float32", "--max-model-len", "2048",
                "--enable-prompt-tokens-details"]  # fmt: skip
        argv.append("--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching")
        env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
    spec = ProcessSpec(argv=argv, name=f"{kind} serve", env=env,
                       log_path=logdir / f"{kind}-serve-{port}.log")  # fmt: skip
    proc = ManagedProcess(spec).start()
    proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=start_timeout)
    return proc


def served_name(base: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(base + "/v1/models", timeout=30) as resp:
        return json.loads(resp.read())["data"][0]["id"]


# -- clients ----------------------------------------------------------------------------------


def latlab_client(base: str, name: str, run: Run, args: argparse.Namespace, out: Path) -> list:
    return [str(LATLAB), "bench", "--url", base + "/v1", "--model", name, "--concurrency",
            str(run.streams), "--num-requests", str(run.requests), "--warmup", "0",
            "--input-len", str(args.input_len), "--output-len", str(args.output_len),
            "--seed", str(run.seed), "--json", str(out), "--no-progress"]  # fmt: skip


def parse_latlab(out: Path, run: Run) -> None:
    level = json.loads(out.read_text())["levels"][0]
    s = level["summary"]
    run.completed = s["completed"]
    run.client_ttft_mean, run.client_ttft_p50 = s["ttft_ms"]["mean"], s["ttft_ms"]["p50"]
    run.extra = {"client_bound": level["client"]["client_bound"], "cache": s.get("cache"),
                 "prompt_length": s.get("prompt_length")}  # fmt: skip


def vllm_client(base: str, name: str, run: Run, args: argparse.Namespace, out: Path) -> list:
    return [str(VLLM_PY), str(SHIM), "bench", "serve", "--backend", "openai",
            "--base-url", base, "--endpoint", "/v1/completions", "--model", name,
            "--tokenizer", str(args.model), "--dataset-name", "random",
            "--random-input-len", str(args.input_len), "--random-output-len",
            str(args.output_len), "--num-prompts", str(run.requests), "--max-concurrency",
            str(run.streams), "--ignore-eos", "--seed", str(run.seed),
            "--percentile-metrics", "ttft,itl,tpot,e2el", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name,
            "--disable-tqdm"]  # fmt: skip


def parse_vllm(out: Path, run: Run) -> None:
    d = json.loads(out.read_text())
    run.completed = d["completed"]
    run.client_ttft_mean, run.client_ttft_p50 = d["mean_ttft_ms"], d["median_ttft_ms"]
    run.extra = {"total_input_tokens": d.get("total_input_tokens")}


CLIENTS = {"latlab": (latlab_client, parse_latlab, LATLAB),
           "vllm": (vllm_client, parse_vllm, VLLM_PY)}  # fmt: skip


def run_client(base: str, name: str, run: Run, args: argparse.Namespace, workdir: Path) -> Run:
    make, parse, exe = CLIENTS[run.client]
    if not exe.exists():
        run.note = missing_note(exe) if exe == VLLM_PY else f"{exe} missing"
        return run
    out = workdir / f"{run.client}-c{run.streams}-s{run.seed}-{time.monotonic_ns()}.json"
    prefix = "latlab" if run.server == "latlab" else "vllm"
    before = scrape(base)
    rc, run.wall_s, _ = run_measured(make(base, name, run, args, out), out.with_suffix(".log"),
                                     args.timeout)  # fmt: skip
    time.sleep(0.5)  # the last request's histogram observation lands as its response ends
    server_figures(prefix, before, scrape(base), run)
    try:
        parse(out, run)
        run.ok = rc == 0 and run.completed == run.server_requests
        if rc == 0 and not run.ok:
            run.note = f"server counted {run.server_requests} requests, client {run.completed}"
    except (OSError, KeyError, ValueError) as exc:
        run.note = f"exit {rc}; no result ({type(exc).__name__}: {exc}); log {out}.log"
    return run


# -- report -----------------------------------------------------------------------------------


def fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def row(r: Run) -> str:
    return (f"| {r.server} | {'on' if r.prefix_caching else 'off'} | {r.client} | {r.streams} | "
            f"{r.completed or 0}/{r.requests} | {fmt(r.client_ttft_mean)} | "
            f"{fmt(r.server_ttft_mean)} | {fmt(r.diff_ms)} | {fmt(r.server_queue_mean)} | "
            f"{fmt(None if r.cache_hit_rate is None else 100 * r.cache_hit_rate, 0)}% | "
            f"{fmt(r.prompt_tokens_mean, 0)} |" + (f" {r.note}" if r.note else ""))  # fmt: skip


HEAD = ("| server | prefix cache | client | streams | requests | client TTFT mean | server TTFT "
        "mean | client - server | server queue mean | cache hits | prompt tokens |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip


def medians(runs: list[Run]) -> list[dict]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.server, r.prefix_caching, r.client, r.streams), []).append(r)
    out = []
    for (server, pc, client, streams), rs in groups.items():
        good = [r for r in rs if r.ok]
        row_: dict = {"server": server, "prefix_caching": pc, "client": client,
                      "streams": streams, "repeats": len(good)}  # fmt: skip
        for key in ("client_ttft_mean", "server_ttft_mean", "diff_ms", "server_queue_mean",
                    "cache_hit_rate", "prompt_tokens_mean"):  # fmt: skip
            vals = [getattr(r, key) for r in good if getattr(r, key) is not None]
            row_[key] = statistics.median(vals) if vals else None
        row_["diff_ms_each"] = [round(r.diff_ms, 2) for r in good if r.diff_ms is not None]
        out.append(row_)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: server and cache setting, clients, levels, repeats, workload, limits."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", choices=["latlab", "vllm"], default="latlab")
    p.add_argument("--prefix-caching", choices=["on", "off"], default="on")
    p.add_argument("--model", type=Path, default=BUNDLED)
    p.add_argument("--clients", default="latlab,vllm")
    p.add_argument("--levels", default="1,16")
    p.add_argument("--requests", default="1=24,16=96", help="per level, e.g. 1=24,16=96")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument(
        "--start-timeout",
        type=float,
        default=600.0,
        help="seconds for the server to come up (vLLM compiles at start: minutes "
        "on a loaded machine)",
    )
    p.add_argument("--out", type=Path)
    p.add_argument("--workdir", type=Path)
    return p.parse_args(argv)


def planned_runs(
    args: argparse.Namespace,
    caching: bool,
    levels: list[int],
    counts: dict[int, int],
    clients: list[str],
) -> Iterator[Run]:
    """The runs in order, made one at a time as they are due: client order reversed on
    alternate repeats so neither client always goes first, and a fresh seed each so no run
    re-sends an earlier run's prompts."""
    seed = 1000
    for rep in range(args.repeats):
        for c in levels:
            for client in clients if rep % 2 == 0 else list(reversed(clients)):
                seed += 1
                yield Run(server=args.server, prefix_caching=caching, client=client,
                          streams=c, requests=counts[c], seed=seed)  # fmt: skip


def measure_runs(
    args: argparse.Namespace, caching: bool, workdir: Path, planned: Iterable[Run]
) -> list[Run]:
    """Every planned run against one server started here, each printed as it ends; the server
    is stopped on every way out, SIGTERM included."""
    from latlab.procs import free_port, sigterm_as_exit

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    runs: list[Run] = []
    with sigterm_as_exit():
        server = start_server(args.server, args.model, caching, port, workdir, args.start_timeout)
        try:
            name = served_name(base)
            for run in planned:
                runs.append(run_client(base, name, run, args, workdir))
                print(row(run), file=sys.stderr, flush=True)
        finally:
            server.stop()
    return runs


def result_document(
    args: argparse.Namespace,
    caching: bool,
    runs: list[Run],
    started: str,
    load0: tuple[float, float, float],
    argv: list[str] | None,
) -> dict:
    """The JSON written by ``--out``: setup, machine, revision, command, medians and each run."""
    return {
        "benchmark": "server_ttft_check",
        "date_utc": started,
        "server": args.server,
        "prefix_caching": caching,
        "model": str(args.model),
        "workload": {"input_len": args.input_len, "output_len": args.output_len},
        "machine": {"cpu_count": os.cpu_count(), "loadavg_start": load0,
                    "loadavg_end": os.getloadavg(),
                    "note": "2 cores shared by the server, the client and other jobs"},
        "latlab_revision": latlab_revision(),
        "command": " ".join(["benchmarks/server_ttft_check.py", *(argv or sys.argv[1:])]),
        "medians": medians(runs),
        "runs": [asdict(r) | {"diff_ms": r.diff_ms} for r in runs],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    counts = {int(k): int(v) for k, v in (x.split("=") for x in args.requests.split(","))}
    clients = [c for c in args.clients.split(",") if c]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="server-ttft-"))
    workdir.mkdir(parents=True, exist_ok=True)
    caching = args.prefix_caching == "on"
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load0 = os.getloadavg()
    planned = planned_runs(args, caching, levels, counts, clients)
    runs = measure_runs(args, caching, workdir, planned)
    result = result_document(args, caching, runs, started, load0, argv)
    print(HEAD)
    print("\n".join(row(r) for r in runs))
    print(json.dumps(result["medians"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
