"""Where a batch-64 decode step's CPU side goes, and what repeated steps save.

Two measurements, in one process:

1. Cold against warm: a few ops a step's Python runs (a torch op, a tensor from a list, numpy
   indexing, the native argmax over [64, 4096] logits), each timed once right after streaming
   ``--flush-mb`` through the caches, as a forward pass streams the weights, and once more right
   after (median over ``--calls``).
2. The engine with repeated steps built from the last step's record (steady_batch.py) and with
   the record turned off, in alternating rounds of ``--batch`` x ``--output-len`` tokens: wall
   tok/s and the step's time outside the forward pass.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/step_cpu_side.py \\
        --quantization int8 --kv-cache-dtype int8

The model defaults to the ~106M reference model in bf16 (``engine_speed.py`` builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--quantization", default="int8", help="none or int8")
    p.add_argument("--kv-cache-dtype", default="int8")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--flush-mb", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def cold_and_warm(
    ops: dict[str, Callable[[], object]], flush_mb: int, calls: int
) -> dict[str, dict[str, float]]:
    """Median microseconds of each op right after a cache flush, and right after itself."""
    buffer = torch.empty(flush_mb << 20, dtype=torch.uint8)
    out = {}
    for name, op in ops.items():
        cold, warm = [], []
        for _ in range(calls):
            buffer.add_(1)  # stream the buffer through the caches, as a forward pass does
            t0 = time.perf_counter()
            op()
            t1 = time.perf_counter()
            op()
            warm.append(time.perf_counter() - t1)
            cold.append(t1 - t0)
        out[name] = {"cold_us": 1e6 * statistics.median(cold),
                     "warm_us": 1e6 * statistics.median(warm)}  # fmt: skip
    return out


def step_ops(argmax: Callable | None) -> dict[str, Callable[[], object]]:
    ints = list(range(64))
    positions = np.arange(64, dtype=np.int64) + 100
    tables = np.zeros((64, 64), dtype=np.int64)
    t = torch.arange(64)
    logits = torch.randn(64, 4096)
    ops = {
        "torch add (64 int64)": lambda: t + 1,
        "torch.tensor of a 64-int list": lambda: torch.tensor(ints, dtype=torch.long),
        "numpy gather (64 slots)": lambda: tables[np.arange(64), positions // 16] * 16,
        "tensor.tolist (64)": lambda: t.tolist(),
        "an empty Python call": lambda: None,
    }
    if argmax is not None:
        ops["native greedy argmax [64, 4096]"] = lambda: argmax(logits)
    return ops


def engine_rounds(args: argparse.Namespace, llm) -> list[dict]:
    """Alternating rounds with the record on and off: tok/s and the CPU side per step."""
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 4000) for _ in range(args.prompt_len)]
               for _ in range(args.batch)]  # fmt: skip
    from latlab.engine import SamplingParams

    params = SamplingParams(max_tokens=args.output_len, ignore_eos=True)
    engine, steady = llm.engine, llm.engine.runner.steady
    take = steady.take
    llm.generate(prompts, params)  # warm-up
    rows = []
    for r in range(args.rounds):
        for on in (True, False) if r % 2 == 0 else (False, True):
            steady.take = take if on else (lambda seqs, counts: None)
            before, start = engine.stats(), time.perf_counter()
            llm.generate(prompts, params)
            elapsed, after = time.perf_counter() - start, engine.stats()
            steps = after.steps_total - before.steps_total
            step_s = after.step_seconds_total - before.step_seconds_total
            outside = step_s - (after.forward_seconds_total - before.forward_seconds_total)
            rows.append({"round": r, "repeated_steps": on,
                         "tok_s": args.batch * args.output_len / elapsed,
                         "outside_ms_per_step": 1e3 * outside / steps,
                         "outside_fraction": outside / step_s})  # fmt: skip
            print(
                f"round {r} repeated steps {'on ' if on else 'off'}: "
                f"{rows[-1]['tok_s']:,.1f} tok/s, outside the forward pass "
                f"{rows[-1]['outside_ms_per_step']:.3f} ms a step "
                f"({100 * rows[-1]['outside_fraction']:.1f}%)",
                flush=True,
            )
    steady.take = take
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for on in (True, False):
        mine = [r for r in rows if r["repeated_steps"] is on]
        out["on" if on else "off"] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("tok_s", "outside_ms_per_step", "outside_fraction")
        }
    out["tok_s_ratio"] = out["on"]["tok_s"] / out["off"]["tok_s"]
    return out


def main() -> None:
    args = parse_args()
    from latlab.engine import LLM

    torch.set_num_threads(args.threads)
    if not (args.model / "model.safetensors").exists():
        from latlab.testing.random_model import REFERENCE_106M, save_random_llama

        save_random_llama(args.model, REFERENCE_106M, dtype="bfloat16")
    llm = LLM(str(args.model), dtype="bfloat16", num_threads=args.threads,
              quantization=None if args.quantization == "none" else args.quantization,
              kv_cache_dtype=args.kv_cache_dtype, kv_cache_bytes=1 << 30,
              max_num_seqs=max(64, args.batch))  # fmt: skip
    print(llm.engine.summary(), flush=True)
    step = llm.engine.runner.step_ops
    ops = cold_and_warm(step_ops(step.greedy_argmax if step else None), args.flush_mb, args.calls)
    for name, t in ops.items():
        print(f"{name:34s} cold {t['cold_us']:7.1f} us   warm {t['warm_us']:6.1f} us "
              f"({t['cold_us'] / max(t['warm_us'], 1e-9):.1f}x)")  # fmt: skip
    rows = engine_rounds(args, llm)
    result = {
        "threads": args.threads,
        "ops": ops,
        "rounds": rows,
        "summary": summary(rows),
        "engine": llm.engine.describe(),
        "loadavg": list(os.getloadavg()),
    }
    s = result["summary"]
    print(f"medians: on {s['on']['tok_s']:,.1f} tok/s, {s['on']['outside_ms_per_step']:.3f} ms "
          f"({100 * s['on']['outside_fraction']:.1f}%); off {s['off']['tok_s']:,.1f} tok/s, "
          f"{s['off']['outside_ms_per_step']:.3f} ms ({100 * s['off']['outside_fraction']:.1f}%);"
          f" on/off {s['tok_s_ratio']:.3f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
