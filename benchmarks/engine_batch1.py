"""Small-batch decode against the memory-bandwidth limit: each lever on and off, in one process.

Issue 16's batch-1 goal is a decode step within 10% of the time it takes to read the bytes it
must read (the weights once, plus the KV cache) at the read bandwidth measured in the same run.
This script measures, in one process and interleaved round by round (A B C D A B C D ...):

- the engine's decode step at ``--batches`` (default 1) with the native decode steps
  (``native_decode``) and huge-page weights (``huge_pages``) each on and off, and the default
  engine of ``engine_speed.py`` (room for 64 sequences: its plain weights in GEMV blocks);
- the read bandwidth: ``latlab.engine.roofline.measure_read_bandwidth`` (the figure
  engine_speed.py divides by, a torch sum over a 512 MB buffer in 4 KiB pages) and the same sum
  over a buffer in huge pages;
- each of the model's linear shapes at ``--rows``: torch's ``F.linear`` and the native GEMV on
  plain rows and on GEMV blocks, over 12 distinct weights per shape (as the model holds them),
  in GB/s of weights read.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/engine_batch1.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

VARIANTS = {  # name -> engine settings
    "torch ops, 4 KiB pages": {"native_decode": False, "huge_pages": False},
    "torch ops, huge pages": {"native_decode": False, "huge_pages": True},
    "native, 4 KiB pages": {"native_decode": True, "huge_pages": False},
    "native, huge pages": {"native_decode": True, "huge_pages": True},
    # room for 64 sequences: packed copies for larger steps, and these weights in GEMV blocks
    "native, huge pages, GEMV blocks": {
        "native_decode": True,
        "huge_pages": True,
        "max_num_seqs": 64,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/latlab-serve-bench/ref106m"))
    p.add_argument("--dtype", default="float32", help="the engines' dtype (bfloat16: bf16 GEMVs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", default="1", help="decode batch sizes (1-4 use the native path)")
    p.add_argument("--rows", default="1,2,4", help="rows for the per-shape GEMV comparison")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=6, help="decode steps timed per round")
    p.add_argument("--context", type=int, default=64, help="prompt tokens before timing")
    p.add_argument("--probe-mb", type=int, default=512, help="bandwidth probe buffer size")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also split the default engine's batch-1 step: forward, its GEMVs alone over its "
        "own weights, a torch sum over the same weights",
    )
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def interleaved(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each fn returns one measurement; rounds run A B C ... A B C ..., warm-up first."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def run_benchmark(
    parse_args: Callable[[list[str] | None], Any],
    measure: Callable[[Any], dict],
    report: Callable[[dict], None],
    argv: list[str] | None = None,
) -> None:
    """A benchmark's main: parse, measure, print the report, and write ``--json`` if given."""
    args = parse_args(argv)
    result = measure(args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def summary(values: list[float], *, times: bool = False) -> dict[str, float]:
    """Median, best (the lowest time, or the highest rate) and every value."""
    best = min(values) if times else max(values)
    return {"median": statistics.median(values), "best": best, "all": values}


def bandwidth_probes(nbytes: int) -> dict[str, Callable[[], float]]:
    """Bytes/s of a streaming read: the roofline's probe, and the same sum in huge pages."""
    import torch

    from latlab.engine.huge_pages import move_to_huge_pages
    from latlab.engine.roofline import measure_read_bandwidth

    holder = torch.nn.Module()
    holder.register_buffer("buf", torch.ones(nbytes // 4))  # 512 MB, as the roofline's probe
    move_to_huge_pages(holder)

    def huge() -> float:
        start = time.perf_counter()
        holder.buf.sum()
        return holder.buf.numel() * 4 / (time.perf_counter() - start)

    return {
        "measure_read_bandwidth": lambda: measure_read_bandwidth(
            torch.device("cpu"), nbytes=nbytes, repeats=3
        ),
        "huge-page sum": huge,
    }


def engine_steps(args, batch: int) -> tuple[dict[str, Callable[[], float]], dict, int]:
    """One engine per variant, each with ``batch`` sequences decoding; fn = seconds per step.
    Also what each engine chose, and the bytes of weights a step reads."""
    from latlab.engine import EngineConfig, SamplingParams
    from latlab.engine.llm_engine import LLMEngine
    from latlab.engine.roofline import decode_cost

    fns, described = {}, {}
    params = SamplingParams(max_tokens=1800, ignore_eos=True)
    for name, settings in VARIANTS.items():
        engine = LLMEngine(EngineConfig(**{
            "model": str(args.model_dir), "dtype": args.dtype, "num_threads": args.threads,
            "max_num_seqs": batch, **settings,
        }))  # fmt: skip
        for i in range(batch):
            prompt = [10 + (i * 7919 + j * 104729 + 17) % 4000 for j in range(args.context)]
            engine.add_request(prompt, params)
        for _ in range(4):  # prefill, first decode steps
            engine.step()
        described[name] = engine.describe()

        def step(engine=engine) -> float:
            start = time.perf_counter()
            for _ in range(args.steps):
                engine.step()
            return (time.perf_counter() - start) / args.steps

        fns[name] = step
    cost = decode_cost(engine.runner.model, batch=1, context=0, kv_bytes_per_cached_token=0)
    return fns, described, cost.weight_bytes


def shape_rates(args, rows: int) -> dict[str, Callable[[], float]]:
    """GB/s of weights read by F.linear and the native GEMV (plain rows, GEMV blocks) at each
    of the model's shapes."""
    import torch
    import torch.nn.functional as F

    from latlab.engine.kernels import small_linear
    from latlab.engine.models.gemv_blocks import blocks_of
    from latlab.model_files import load_model_config

    cfg = load_model_config(str(args.model_dir))
    hidden, inter, d = cfg["hidden_size"], cfg["intermediate_size"], cfg.get("head_dim")
    d = d or hidden // cfg["num_attention_heads"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"]) * d
    shapes = {"qkv": (qkv, hidden), "o": (hidden, cfg["num_attention_heads"] * d),
              "gate_up": (2 * inter, hidden), "down": (hidden, inter)}  # fmt: skip
    gemv = small_linear(wait=True).fn
    fns = {}
    for name, (n, k) in shapes.items():
        plain = [torch.randn(n, k) for _ in range(cfg["num_hidden_layers"])]
        blocks = [blocks_of(w) for w in plain]
        x = torch.randn(rows, k)
        kinds = (("F.linear", F.linear, plain), ("native GEMV", gemv, plain),
                 ("native GEMV, blocks", gemv, blocks))  # fmt: skip
        for label, linear, weights in kinds:

            def run(weights=weights, x=x, linear=linear) -> float:
                start = time.perf_counter()
                for w in weights:
                    linear(x, w, None)
                return sum(w.numel() * 4 for w in weights) / (time.perf_counter() - start)

            fns[f"{name} {n}x{k}, {rows} row(s), {label}"] = run
    return fns


def breakdown(args, probes: dict[str, Callable[[], float]]) -> dict:
    """Milliseconds of a batch-1 step of the default engine (room for 64 sequences, as
    engine_speed.py runs it) next to what it must do: its own
    linear weights streamed by the native GEMV alone and by a torch sum, and the probe's time
    for the same bytes; interleaved rounds."""
    import torch

    from latlab.engine import EngineConfig, SamplingParams
    from latlab.engine.kernels import small_linear
    from latlab.engine.llm_engine import LLMEngine
    from latlab.engine.models.gemv_blocks import gemv_weight
    from latlab.engine.roofline import decode_cost, linear_layers

    engine = LLMEngine(EngineConfig(model=str(args.model_dir), dtype=args.dtype,
                                    num_threads=args.threads, max_num_seqs=64))  # fmt: skip
    engine.add_request(list(range(10, 10 + args.context)), SamplingParams(max_tokens=1800))
    for _ in range(4):
        engine.step()
    model, gemv = engine.runner.model, small_linear(wait=True).fn
    layers = linear_layers(model)
    xs = {m.in_features: torch.randn(1, m.in_features) for m in layers}
    weight_bytes = decode_cost(model, batch=1, context=0, kv_bytes_per_cached_token=0).weight_bytes

    def timed(fn: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - start)

        return run

    def forward_ms() -> float:
        before = engine.stats().forward_seconds_total
        engine.step()
        return 1e3 * (engine.stats().forward_seconds_total - before)

    fns = {
        "step": timed(engine.step),
        "forward": forward_ms,
        "native GEMVs alone": timed(
            lambda: [gemv(xs[m.in_features], gemv_weight(m), None) for m in layers]
        ),
        "torch sum of the same weights": timed(lambda: [gemv_weight(m).sum() for m in layers]),
        "probe, same bytes": lambda: 1e3 * weight_bytes / probes["measure_read_bandwidth"](),
    }
    return {name: summary(v, times=True) for name, v in interleaved(fns, args.rounds).items()}


def measure(args) -> dict:
    import os

    import torch

    result: dict = {"threads": args.threads, "loadavg_at_start": os.getloadavg(), "batches": {}}
    probes = bandwidth_probes(args.probe_mb << 20)
    for batch in [int(b) for b in args.batches.split(",")]:
        fns, described, result["weight_bytes"] = engine_steps(args, batch)
        torch.set_num_threads(args.threads)
        rounds = interleaved({**probes, **fns}, args.rounds)
        result["batches"][batch] = {"seconds_per_step": {n: summary(rounds[n], times=True)
                                                         for n in fns},
                                    "bandwidth": {n: summary(rounds[n]) for n in probes},
                                    "engines": described}  # fmt: skip
    rows = {}
    for r in [int(r) for r in args.rows.split(",")]:
        rows[r] = {n: summary(v) for n, v in interleaved(shape_rates(args, r), args.rounds).items()}
    result["shapes_bytes_per_s"] = rows
    if args.breakdown:
        result["breakdown_ms"] = breakdown(args, probes)
    result["loadavg_at_end"] = os.getloadavg()
    return result


def report(result: dict) -> None:
    wb = result["weight_bytes"]
    print(f"threads {result['threads']}; weights {wb / 1e6:.1f} MB; load average "
          f"{result['loadavg_at_start'][0]:.2f} -> {result['loadavg_at_end'][0]:.2f}")  # fmt: skip
    for batch, b in result["batches"].items():
        bw = b["bandwidth"]["measure_read_bandwidth"]["median"]
        huge = b["bandwidth"]["huge-page sum"]["median"]
        print(f"batch {batch}: read bandwidth {bw / 1e9:.1f} GB/s (huge pages {huge / 1e9:.1f}); "
              f"limit {batch * bw / wb:.1f} tok/s (weights only)")  # fmt: skip
        for name, s in b["seconds_per_step"].items():
            sec = s["median"]
            best = min(s["all"])
            print(
                f"  {name:24s} {batch / sec:6.1f} tok/s (best {batch / best:5.1f})  "
                f"{wb / bw / sec:4.0%} of the limit, {wb / huge / sec:4.0%} of the huge-page one"
            )
    for _rows, shapes in result["shapes_bytes_per_s"].items():
        for name, s in shapes.items():
            print(f"  {name:44s} {s['median'] / 1e9:5.1f} GB/s (best {s['best'] / 1e9:5.1f})")


def report_breakdown(result: dict) -> None:
    if "breakdown_ms" not in result:
        return
    print("batch-1 step of the default engine, ms (median, best):")
    for name, s in result["breakdown_ms"].items():
        print(f"  {name:30s} {s['median']:6.2f}  {min(s['all']):6.2f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = measure(args)
    report(result)
    report_breakdown(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
