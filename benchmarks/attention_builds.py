"""Decode attention of two or more kernel builds, side by side in one process.

A change to the paged decode attention kernel is judged against the build before it, over the
caches a decode step reads: the engine's layout and huge pages, blocks in random order, the
~106M reference model's heads (12 query heads, 6 KV heads, head size 64), ``--layers`` layers
each with its own cache and a 96 MB buffer read between passes (a step's weights evict the KV
from the caches), float32 queries, float32 and bf16 KV. Rounds are interleaved across builds.

``current`` is this tree's build; any other entry is the path of a built module (``.so``), e.g.
the one ``python -m latlab.engine.kernels`` printed for an older checkout (the builds are kept
side by side under ``$TORCH_EXTENSIONS_DIR``, one folder per source hash):

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/attention_builds.py \\
        --builds current,/root/.cache/torch_extensions/py311_cpu/<old>/<old>.so
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # engine_batch1.py sits beside this script
from attention_caches import BLOCK, HEAD_DIM, HEADS, KV_HEADS, layers_pass, scattered_tables
from engine_batch1 import interleaved, run_benchmark
from kernel_builds import load_module


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--builds", default="current", help="current and/or paths of built .so files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--contexts", default="38,70,128,256", help="tokens of context")
    p.add_argument("--kv-dtypes", default="float32,bfloat16")
    p.add_argument("--cache-blocks", type=int, default=4096, help="blocks per cache")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def load_build(entry: str) -> tuple[Callable, str]:
    """The attention function of a build, and what it says of its vector path."""
    if entry == "current":
        from latlab.engine.kernels import paged_decode_attention

        kernel = paged_decode_attention(wait=True)
        if kernel.fn is None:
            raise SystemExit(f"no native attention kernel here: {kernel.reason}")
        return kernel.fn, kernel.reason
    module = load_module(entry)
    lanes = getattr(module, "attention_lanes", lambda: "?")()
    return module.paged_decode_attention, f"{Path(entry).name} ({lanes} lanes reported)"


def passes(args, attends: dict[str, Callable], context: int, caches: list):
    """Seconds of one cold pass over ``--layers`` layers, per build."""
    import torch

    tables, lens = scattered_tables(args.batch, context, args.cache_blocks, seed=context)
    q = torch.randn(args.batch, HEADS, HEAD_DIM)
    flush = torch.ones(96 << 20 >> 2)

    def run(attend: Callable) -> float:
        return layers_pass(attend, q, caches, tables, lens, layers=args.layers, flush=flush)

    return {name: (lambda fn=fn: run(fn)) for name, fn in attends.items()}


def measure(args) -> dict:
    import torch

    from latlab.engine.huge_pages import zeros_in_huge_pages

    torch.set_num_threads(args.threads)
    builds = {entry: load_build(entry) for entry in args.builds.split(",") if entry}
    attends = {name: fn for name, (fn, _) in builds.items()}
    reasons = {name: why for name, (_, why) in builds.items()}
    result: dict = {"threads": args.threads, "batch": args.batch, "layers": args.layers,
                    "builds": reasons, "rows": []}  # fmt: skip
    shape = (args.cache_blocks, KV_HEADS, BLOCK, HEAD_DIM)  # the engine's layout
    for kv_dtype in [d for d in args.kv_dtypes.split(",") if d]:
        dtype = getattr(torch, kv_dtype)
        caches = zeros_in_huge_pages(2 * args.layers, shape, dtype)
        for cache in caches:
            cache.normal_()
        for context in [int(c) for c in args.contexts.split(",") if c]:
            kv_bytes = 2 * args.batch * context * KV_HEADS * HEAD_DIM * dtype.itemsize
            got = interleaved(passes(args, attends, context, caches), args.rounds)
            result["rows"].append({"kv_dtype": kv_dtype, "context": context,
                                   "kv_bytes": kv_bytes * args.layers, "seconds": got})  # fmt: skip
            print(f"{kv_dtype} KV, context {context}: done", flush=True)
        del caches
    return result


def report(result: dict) -> None:
    print(f"\n{result['threads']} thread(s), batch {result['batch']}, {result['layers']} layers")
    for name, why in result["builds"].items():
        print(f"  {name}: {why}")
    names = list(result["builds"])
    print("medians of interleaved rounds, ms (GB/s of KV read); x: against the first build")
    print(f"{'KV':<9} {'context':>7} " + " ".join(f"{n[-22:]:>30}" for n in names))
    for row in result["rows"]:
        first = statistics.median(row["seconds"][names[0]])
        cells = []
        for name in names:
            sec = statistics.median(row["seconds"][name])
            gbs = row["kv_bytes"] / sec / 1e9
            cells.append(f"{sec * 1e3:8.2f} ms ({gbs:4.1f} GB/s) {first / sec:4.2f}x")
        print(f"{row['kv_dtype']:<9} {row['context']:>7} " + " ".join(f"{c:>30}" for c in cells))


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args, measure, report, argv)


if __name__ == "__main__":
    main()
