"""Launched servers compared on one workload: vLLM vs latlab serve, or vLLM TP 1 vs TP 2.

Both servers are launched first (latlab.deploy: cold start timed, KV capacity read from the
log), then measured with the same bench workload in alternating order (A B B A A B ...) for
``--repeats`` rounds, so drift on a shared machine hits both alike; the figures are medians
of the rounds (with their range) and the ratio is taken per round. ``--launches N`` launches
the pair N times (cold start medians; each launch pair measured ``--repeats`` rounds). Every
launch is stopped (its whole process group) afterwards, on error and on Ctrl-C.

    # latlab serve vs vllm serve on the ~106M reference model (docs/vllm.md)
    nice -n 10 .venv/bin/python benchmarks/vllm_servers.py --model ref106m \\
        --compare servers --concurrency 1,8 --repeats 3 --json /tmp/vllm_servers.json
    # vLLM tensor parallel 2 vs 1 on this machine's CPU cores
    nice -n 10 .venv/bin/python benchmarks/vllm_servers.py --model ref106m --compare tp --eager

vLLM is found as latlab finds it (LATLAB_VLLM_CMD / PATH / the CPU build of
scripts/install_vllm_cpu.sh); its KV cache is 1 GiB (VLLM_CPU_KVCACHE_SPACE=1) so both fit.
Both servers run float32 (AVX2-only CPUs have no native bf16); ``--eager`` adds vLLM's
``--enforce-eager`` (no torch.compile warm-up: launches take a third of the time on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from serve_cold_start import WORK  # benchmarks/ is on sys.path when run as a script

KV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
# float32 for both servers: on AVX2-only CPUs bf16 matmuls are emulated (150x slower here).
FP32 = {"dtype": "float32"}


def model_dir(name: str) -> Path:
    """The bundled model, the ~106M reference model (built once), or a path."""
    from serve_cold_start import model_dirs

    return model_dirs([name])[name]


def server_runs(kind: str, model: Path, log_dir: Path, eager: bool = False) -> list:
    from latlab.bench.served import ServerRun
    from latlab.deploy import LaunchSettings
    from latlab.deploy.latlab_server import LatlabServerBackend
    from latlab.deploy.vllm import VllmBackend

    def settings(args: dict, env: dict, vllm: bool = True) -> LaunchSettings:
        if eager and vllm:
            args = {**args, "enforce_eager": True}
        return LaunchSettings(model=str(model), engine_args=args, env=env, log_dir=log_dir)

    if kind == "servers":
        return [ServerRun(backend=VllmBackend(), settings=settings(FP32, KV), label="vllm"),
                ServerRun(backend=LatlabServerBackend(), settings=settings(FP32, {}, vllm=False),
                          label="latlab-server")]  # fmt: skip
    from latlab.optimize.vllm_recipes import cpu_binding

    # vLLM CPU's automatic binding wants a NUMA node per rank: split the cores explicitly.
    tp2_env = {**KV, **cpu_binding(2, sorted(os.sched_getaffinity(0)))}
    return [
        ServerRun(backend=VllmBackend(), settings=settings(FP32, KV), label="vllm tp1"),
        ServerRun(backend=VllmBackend(), settings=settings({**FP32, "tensor_parallel_size": 2},
                                                           tp2_env), label="vllm tp2"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ref106m")
    parser.add_argument("--compare", choices=["servers", "tp"], default="servers")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--input-len", default="128")
    parser.add_argument("--output-len", default="64")
    parser.add_argument("--repeats", type=int, default=3, help="measurement rounds per launch")
    parser.add_argument("--launches", type=int, default=1, help="times the pair is launched")
    parser.add_argument("--eager", action="store_true", help="vLLM --enforce-eager")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    rounds: list[dict] = []
    for launch_index in range(args.launches):
        rounds += _launch_and_measure(args, levels, launch_index)
    summary = _summarize(rounds, levels)
    for line in summary["lines"]:
        print(line)
    if args.json:
        out = {"args": vars(args) | {"json": str(args.json)}, "rounds": rounds,
               "summary": summary, "loadavg_end": os.getloadavg()}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


def _launch_and_measure(args: argparse.Namespace, levels: list[int], launch_index: int) -> list:
    """Launch the pair once, measure ``--repeats`` rounds alternating who goes first."""
    from latlab.bench.api import BenchConfig, run_bench
    from latlab.bench.targets import OpenAITarget
    from latlab.deploy import launch
    from latlab.model_files import load_tokenizer

    model = model_dir(args.model)
    tokenizer = load_tokenizer(str(model))
    runs = server_runs(args.compare, model, WORK / "logs", args.eager)
    servers = []
    rounds = []
    try:
        for run in runs:
            servers.append((run.label, launch(run.backend, run.settings, progress=print)))
            print(f"{run.label}: healthy after {servers[-1][1].cold_start.healthy_s:.1f} s")
        for index in range(args.repeats):
            order = servers if (index + launch_index) % 2 == 0 else servers[::-1]
            figures = {}
            for label, server in order:
                config = BenchConfig(concurrency=levels, num_requests=args.num_requests,
                                     warmup=2, input_len=args.input_len,
                                     output_len=args.output_len, seed=index)  # fmt: skip
                target = OpenAITarget(server.url, model=server.model, tokenizer=tokenizer)
                result = run_bench(config, target, progress=False)
                result.target["server"] = server.to_dict()
                figures[label] = _figures(result)
            rounds.append({label: figures[label] for label, _ in servers})
            print(json.dumps({k: v["levels"] for k, v in rounds[-1].items()}, indent=1))
    finally:
        for _, server in servers:
            server.stop()
    return rounds


def _figures(result) -> dict:  # type: ignore[no-untyped-def]
    server = result.target["server"]
    levels = {}
    for level in result.levels:
        s = level.summary
        levels[str(level.load["concurrency"])] = {
            "ttft_ms_p50": s.ttft_ms.p50, "tpot_ms_p50": s.tpot_ms.p50,
            "output_tokens_per_s": s.output_tokens_per_s, "failed": s.failed,
        }  # fmt: skip
    return {
        "cold_start_s": server["cold_start"]["first_token_s"],
        "kv_cache_tokens": server["engine"]["kv_cache_tokens"],
        "version": server["version"],
        "command": server["command"],
        "levels": levels,
    }


def _summarize(rounds: list[dict], levels: list[int]) -> dict:
    labels = list(rounds[0])
    first, second = labels[0], labels[1]
    lines, table = [], {}
    for label in labels:
        colds = sorted({r[label]["cold_start_s"] for r in rounds})
        cold = statistics.median(colds)
        lines.append(f"{label}: cold start {cold:.1f} s (median of {len(colds)} launches), "
                     f"KV {rounds[0][label]['kv_cache_tokens']} tokens")  # fmt: skip
        table[label] = {"cold_start_s": cold, "kv_cache_tokens":
                        rounds[0][label]["kv_cache_tokens"]}  # fmt: skip
    for c in levels:
        for key in ("ttft_ms_p50", "tpot_ms_p50", "output_tokens_per_s"):
            a = [r[first]["levels"][str(c)][key] for r in rounds]
            b = [r[second]["levels"][str(c)][key] for r in rounds]
            ratios = [y / x for x, y in zip(a, b, strict=True) if x and y]
            table[f"c{c}:{key}"] = {first: statistics.median(a), second: statistics.median(b),
                                     f"{second}/{first}": statistics.median(ratios),
                                     "ratio_range": [min(ratios), max(ratios)]}  # fmt: skip
            lines.append(f"concurrency {c} {key}: {first} {statistics.median(a):.1f}, {second} "
                         f"{statistics.median(b):.1f} ({second}/{first} per round: median "
                         f"{statistics.median(ratios):.2f}x, range {min(ratios):.2f}-"
                         f"{max(ratios):.2f}x)")  # fmt: skip
    return {"lines": lines, "table": table}


if __name__ == "__main__":
    main()
