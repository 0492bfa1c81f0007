"""Does the engine's thread count follow other jobs that arrive after it started?

One engine, started on every core (the engine's choice on a quiet machine), decodes at batch 1
for three phases: quiet, while another process spins on one core (the job that arrives), quiet
again.
Two variants of the same engine, interleaved per repeat:

- ``follows``: the default; between steps the engine re-reads ``/proc/stat`` every second and
  moves its thread count after two agreeing looks (``hardware.ThreadFollower``);
- ``fixed``: the same engine with the follower off, keeping the count it chose at start (what
  the engine did before, and what any engine with a fixed thread count does).

Prints tok/s per phase and variant (medians over repeats) and the thread changes.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/engine_follow.py \\
        --repeats 2 --json benchmarks/results/engine_follow.json
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

PHASES = ("quiet", "one core taken", "quiet again")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--phase-seconds", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--start-threads",
        type=int,
        default=None,
        help="the count both variants start from (default: every usable core, the engine's "
        "choice on a quiet machine)",
    )
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def decode_for(llm, seconds: float) -> float:
    """tok/s of batch-1 greedy decoding, in 16-token requests, for ``seconds``."""
    from latlab.engine import SamplingParams

    params = SamplingParams(max_tokens=16, ignore_eos=True)
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = llm.generate([[11, 22, 33, 44, 55, 66]], params)
        tokens += len(out[0].token_ids)
    return tokens / (time.perf_counter() - start)


def spinner() -> subprocess.Popen:
    """Another job that keeps one core busy (pure Python, so no threads of its own)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_variant(llm, *, follows: bool, start_threads: int, seconds: float) -> dict:
    import torch

    runner = llm.engine.runner
    follower = runner.follower
    torch.set_num_threads(start_threads)
    if follower is not None:
        follower.reset(start_threads)
    runner.follower = follower if follows else None
    rates, threads = [], []
    for phase in PHASES:
        job = spinner() if phase == "one core taken" else None
        try:
            rates.append(decode_for(llm, seconds))
        finally:
            if job is not None:
                job.kill()
                job.wait()
        threads.append(torch.get_num_threads())
    runner.follower = follower
    changes = follower.changes if (follows and follower is not None) else 0
    return {"tok_s": rates, "threads_after_phase": threads, "thread_changes": changes}


def main(argv: list[str] | None = None) -> None:
    from latlab.engine import LLM
    from latlab.engine.kernels import paged_decode_attention

    args = parse_args(argv)
    paged_decode_attention(wait=True)
    llm = LLM(str(args.model_dir), dtype=args.dtype, kv_cache_bytes=256 << 20)
    print(llm.engine.summary(), flush=True)
    start_threads = args.start_threads or len(os.sched_getaffinity(0))
    decode_for(llm, 2.0)  # warm-up
    runs: dict[str, list[dict]] = {"follows": [], "fixed": []}
    for repeat in range(args.repeats):
        order = ("follows", "fixed") if repeat % 2 == 0 else ("fixed", "follows")
        for name in order:
            run = run_variant(llm, follows=name == "follows", start_threads=start_threads,
                              seconds=args.phase_seconds)  # fmt: skip
            runs[name].append(run)
            print(f"repeat {repeat + 1} {name}: {run}", flush=True)
    result = {
        "start_threads": start_threads, "cores": len(os.sched_getaffinity(0)),
        "loadavg": os.getloadavg(), "phase_seconds": args.phase_seconds, "runs": runs,
    }  # fmt: skip
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def report(result: dict) -> None:
    print(f"\nengine started with {result['start_threads']} thread(s) of {result['cores']} cores")
    print(f"{'variant':>8} " + " ".join(f"{p:>16}" for p in PHASES) + "   thread changes")
    for name, runs in result["runs"].items():
        medians = [statistics.median(r["tok_s"][i] for r in runs) for i in range(len(PHASES))]
        changes = [r["thread_changes"] for r in runs]
        cells = " ".join(f"{m:>10.1f} tok/s" for m in medians)
        print(f"{name:>8} {cells}   {changes}")


if __name__ == "__main__":
    main()
