"""What the HTTP layer costs: the same engine in-process vs behind ``latlab serve``.

Anchor: latlab's own engine driven in-process through ``EngineTarget`` (no HTTP, no JSON, no
second process), measured in the same run with the same EngineConfig, workload and bench
runner. The other side is ``latlab serve`` as a subprocess driven by ``latlab bench``'s HTTP
client (``OpenAITarget``), so the figure includes everything a user pays for the server: SSE
framing, the event loop sharing the GIL with the engine thread, loopback TCP, and a client
process on the same cores. Runs are interleaved (in-process, HTTP, in-process, HTTP, ...).

    nice -n 10 .venv/bin/python benchmarks/serve_overhead.py --concurrency 1,16,64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from latlab.bench.api import BenchConfig

REPO = Path(__file__).resolve().parents[1]
READY_PREFIX = "latlab serve: ready at "
WORK = Path(os.environ.get("LATLAB_BENCH_DIR", "/tmp/latlab-serve-bench"))


def reference_model() -> Path:
    path = WORK / "ref106m"
    if not (path / "model.safetensors").exists():
        from latlab.testing.random_model import REFERENCE_106M, save_random_llama

        save_random_llama(path, REFERENCE_106M, dtype="bfloat16")
    return path


def start_server(model: Path, engine_flags: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [str(Path(sys.executable).parent / "latlab"), "serve", str(model), "--port", "0"]
    proc = subprocess.Popen(
        cmd + engine_flags, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith(READY_PREFIX):
        proc.kill()
        raise RuntimeError(f"latlab serve did not start: {line!r}")
    return proc, line[len(READY_PREFIX) :].split()[0]


def _ticks(path: str) -> float:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _cpu(server_pid: int) -> dict[str, float]:
    """CPU seconds so far: this process (client, in-process engine), the server process, and
    the server's main thread alone (its event loop: HTTP, JSON, SSE, tokenization)."""
    return {
        "this_process_s": time.process_time(),
        "server_process_s": _ticks(f"/proc/{server_pid}/stat"),
        "server_loop_thread_s": _ticks(f"/proc/{server_pid}/task/{server_pid}/stat"),
    }


def _per_1k_tokens(spent: dict[str, float], side: str, tokens: int) -> dict[str, float]:
    k = tokens / 1000
    if side == "in_process":
        return {"cpu_ms_per_1k_tokens_total": 1000 * spent["this_process_s"] / k}
    both = spent["this_process_s"] + spent["server_process_s"]
    return {
        "cpu_ms_per_1k_tokens_total": 1000 * both / k,
        "cpu_ms_per_1k_tokens_server_loop": 1000 * spent["server_loop_thread_s"] / k,
        "cpu_ms_per_1k_tokens_client": 1000 * spent["this_process_s"] / k,
    }


def level_figures(result) -> dict[int, dict[str, float]]:
    out = {}
    for level in result.levels:
        s = level.summary
        out[level.load["concurrency"]] = {
            "tok_s": s.output_tokens_per_s,
            "ttft_p50_ms": s.ttft_ms.p50,
            "tpot_p50_ms": s.tpot_ms.p50,
            "failed": s.failed,
            "errors": dict(s.errors) if s.errors else {},
        }
    return out


def parse_args() -> argparse.Namespace:
    """The command line: model, workload, engine limits, repeats and where the JSON goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model dir [default: ~106M reference]")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--num-requests", type=int, default=64, help="per level")
    parser.add_argument("--input-len", default="32")
    parser.add_argument("--output-len", default="128")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--kv-cache-bytes", type=int, default=512 * 2**20)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def print_setup(args: argparse.Namespace, model: Path) -> None:
    """The model, machine and workload, so a pasted table says what it measured."""
    print(f"model {model}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"workload: input {args.input_len}, output {args.output_len} tokens, ignore_eos, greedy,")
    print(f"{args.num_requests} requests per level; torch threads: default (2) in each process")


def side_figures(
    side: str,
    target_for: Callable[[], object],
    config: BenchConfig,
    levels: list[int],
    server_pid: int,
    tokens_per_level: int,
) -> dict[int, dict[str, float]]:
    """One side's figures at every level, each level its own bench so that the CPU time read
    around it is charged to that level alone."""
    from latlab.bench.api import run_bench

    figures: dict[int, dict[str, float]] = {}
    for c in levels:
        level_config = dataclasses.replace(config, concurrency=[c])
        target = target_for()
        before = _cpu(server_pid)
        result = run_bench(level_config, target, False)
        spent = {k: v - before[k] for k, v in _cpu(server_pid).items()}
        figures.update(level_figures(result))
        figures[c].update(_per_1k_tokens(spent, side, tokens_per_level))
    return figures


def interleaved_runs(
    args: argparse.Namespace, model: Path, config: BenchConfig, levels: list[int]
) -> dict[str, list[dict]]:
    """Both sides run in turn (in-process, HTTP, in-process, ...), so a change in the machine's
    load lands on both rather than on whichever ran last; the server is stopped on every way
    out."""
    from latlab.bench.api import run_bench
    from latlab.bench.local_targets import EngineTarget
    from latlab.bench.targets import OpenAITarget
    from latlab.engine import AsyncLLM, EngineConfig

    engine_fields = {"max_num_seqs": args.max_num_seqs, "kv_cache_bytes": args.kv_cache_bytes}
    flags = ["--max-num-seqs", str(args.max_num_seqs), "--kv-cache-bytes", str(args.kv_cache_bytes)]
    # Not owned by the target: run_bench closes owned engines, and we reuse this one.
    in_process = EngineTarget(AsyncLLM(EngineConfig(model=str(model), **engine_fields)))
    server, url = start_server(model, flags)
    tokens_per_level = (args.num_requests + config.warmup) * int(args.output_len)
    runs: dict[str, list[dict]] = {"in_process": [], "http": []}
    targets = {"in_process": lambda: in_process, "http": lambda: OpenAITarget(url, str(model))}
    try:
        # One small untimed round each: loads the client's tokenizer and warms both engines,
        # so one-time costs stay out of the CPU-per-token figures.
        warm = dataclasses.replace(config, concurrency=[4], num_requests=4, warmup=0)
        run_bench(warm, in_process, False)
        run_bench(warm, OpenAITarget(url, str(model)), False)
        for _ in range(args.repeats):
            for side in ("in_process", "http"):
                figures = side_figures(
                    side, targets[side], config, levels, server.pid, tokens_per_level
                )
                runs[side].append(figures)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    return runs


def print_failures(runs: dict[str, list[dict]]) -> None:
    """Every level of every run that had a failed request: a figure from a run that failed
    requests measures less work than it claims."""
    failures = [
        (side, run[c]) for side in runs for run in runs[side] for c in run if run[c]["failed"]
    ]
    if failures:
        print(f"FAILED requests: {failures}")


RUN_STATS = (
    "tok_s",
    "ttft_p50_ms",
    "tpot_p50_ms",
    "cpu_ms_per_1k_tokens_total",
    "cpu_ms_per_1k_tokens_server_loop",
    "cpu_ms_per_1k_tokens_client",
)


def median_row(runs: dict[str, list[dict]], c: int) -> dict[str, dict[str, float]]:
    """Each figure's median over the repeats at concurrency ``c``, per side (``in``, ``http``);
    NaN where a side has no such figure (the in-process side has no server loop)."""
    return {
        key: {
            stat: statistics.median(run[c].get(stat) or math.nan for run in runs[side])
            for stat in RUN_STATS
        }
        for key, side in (("in", "in_process"), ("http", "http"))
    }


def print_row(c: int, inp: dict[str, float], http: dict[str, float], ratio: float) -> None:
    """One table line: in-process against HTTP for each figure."""
    print(
        f"{c:>11} | {inp['tok_s']:>7,.0f} / {http['tok_s']:<7,.0f} ({ratio:.2f}) | "
        f"{inp['ttft_p50_ms']:.0f} / {http['ttft_p50_ms']:.0f} | "
        f"{inp['tpot_p50_ms']:.1f} / {http['tpot_p50_ms']:.1f} | "
        f"{inp['cpu_ms_per_1k_tokens_total']:.0f} / {http['cpu_ms_per_1k_tokens_total']:.0f} "
        f"({http['cpu_ms_per_1k_tokens_server_loop']:.0f}, "
        f"{http['cpu_ms_per_1k_tokens_client']:.0f})"
    )


def median_table(runs: dict[str, list[dict]], levels: list[int]) -> dict[int, dict]:
    """The medians per level with HTTP's throughput over in-process's, printed as a table and
    returned for the JSON."""
    print(
        "\nconcurrency | tok/s in-process / HTTP (ratio) | TTFT p50 ms | TPOT p50 ms | "
        "CPU ms per 1k tokens: in-process total / HTTP total (server loop thread, client)"
    )
    table = {}
    for c in levels:
        row = median_row(runs, c)
        ratio = row["http"]["tok_s"] / row["in"]["tok_s"]
        table[c] = {**row, "http_over_in_process": ratio}
        print_row(c, row["in"], row["http"], ratio)
    return table


def main() -> None:
    args = parse_args()
    from latlab.bench.api import BenchConfig

    model = Path(args.model) if args.model else reference_model()
    levels = [int(c) for c in args.concurrency.split(",")]
    config = BenchConfig(
        concurrency=levels,
        num_requests=args.num_requests,
        input_len=args.input_len,
        output_len=args.output_len,
        warmup=2,
    )
    print_setup(args, model)
    runs = interleaved_runs(args, model, config, levels)
    if args.json:  # the raw runs first, whatever happens to the table below
        args.json.write_text(json.dumps({"runs": runs}, indent=2, default=str))
    print_failures(runs)
    table = median_table(runs, levels)
    print(f"(median of {args.repeats} interleaved runs; load average {os.getloadavg()[0]:.1f})")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "table": table}, indent=2))


if __name__ == "__main__":
    main()
