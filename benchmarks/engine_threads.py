"""Thread count and OpenMP binding: what the engine should run with on this machine, now.

Each variant runs in a fresh process (OpenMP reads OMP_PROC_BIND / OMP_PLACES / OMP_WAIT_POLICY
once, when torch loads): the engine on the reference model at batch 1 and 64, a short decode
after a warm-up, tok/s. Variants are interleaved round by round and the medians compared, so a
change in the machine's load hits all of them alike. ``auto`` is the engine's own choice (one
thread per core that other jobs leave free); the load average is recorded per round.

    nice -n 10 .venv/bin/python benchmarks/engine_threads.py --rounds 3 --json /tmp/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "auto": {},
    "1 thread": {"threads": "1"},
    "2 threads": {"threads": "2"},
    "2 threads, bound": {"threads": "2", "OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    "2 threads, passive": {"threads": "2", "OMP_WAIT_POLICY": "PASSIVE"},
}


def child(args: argparse.Namespace) -> None:
    """Measure in this process and print one JSON line."""
    from latlab.engine import LLM, SamplingParams

    threads = int(args.threads) if args.threads else None
    llm = LLM(str(args.model_dir), dtype="bfloat16", kv_cache_bytes=1 << 30,
              num_threads=threads, quantization=args.quantization)  # fmt: skip
    out = {"threads": llm.engine.describe()["threads"]}
    for batch in (1, 64):
        prompts = [[10 + (i * 7919 + j * 104729 + 17) % 4000 for j in range(6)]
                   for i in range(batch)]  # fmt: skip
        llm.generate(prompts, SamplingParams(max_tokens=4, ignore_eos=True))
        start = time.perf_counter()
        llm.generate(prompts, SamplingParams(max_tokens=args.tokens, ignore_eos=True))
        out[f"batch_{batch}"] = batch * args.tokens / (time.perf_counter() - start)
    print(json.dumps(out))


def run_variant(args: argparse.Namespace, env_vars: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    threads = env_vars.get("threads", "")
    env.update({k: v for k, v in env_vars.items() if k != "threads"})
    cmd = [sys.executable, __file__, "--child", "--threads", threads, "--tokens", str(args.tokens),
           "--model-dir", str(args.model_dir)]  # fmt: skip
    if args.quantization:
        cmd += ["--quantization", args.quantization]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--quantization", default=None)
    p.add_argument("--threads", default="", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    from latlab.engine.kernels import paged_decode_attention

    paged_decode_attention(wait=True)  # built once here, so every child's engine uses it
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, env_vars in VARIANTS.items():
            runs[name].append(run_variant(args, env_vars))
    result = {"loadavg_per_round": loads, "tokens": args.tokens, "variants": {}}
    for name, got in runs.items():
        row = {key: statistics.median(r[key] for r in got) for key in ("batch_1", "batch_64")}
        row["threads_chosen"] = [r["threads"] for r in got]
        result["variants"][name] = row
        print(f"{name:>20}: batch 1 {row['batch_1']:7.1f} tok/s, batch 64 {row['batch_64']:7.1f}"
              f" tok/s (threads {row['threads_chosen']})")  # fmt: skip
    print(f"load average per round: {[round(x, 1) for x in loads]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return None


if __name__ == "__main__":
    main()
