"""Decode attention's scores (q.K) on AMX tiles against the AVX-512 vector path, same kernel.

The engine's paged decode attention kernel runs bf16 q.K on AMX tiles where the CPU has them
(``tiles=True``, its default) and on AVX-512 otherwise. This times both in one process, rounds
interleaved, at batch ``--batch`` with the ~106M reference model's heads (12 query heads, 6 KV
heads, head size 64), blocks in random order over a cache in huge pages (the engine's), for
each of ``--contexts``:

- **cold**: ``--layers`` layers, each with its own cache, a 96 MB buffer read between passes
  (a step's weights evict the KV from the caches);
- **hot**: the first layer's cache ``--layers`` times (its KV stays in L2/L3 as it can).

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/attention_tiles.py
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

PATHS = {"vector": False, "tiles": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--contexts", default="16,26,70,128,256,1024", help="tokens of context")
    p.add_argument("--cache-blocks", type=int, default=8192, help="blocks per cache (engine's)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def attention_runs(args, context: int, caches: list, hot: bool) -> dict[str, Callable[[], float]]:
    """Seconds of one pass over ``--layers`` layers, per path."""
    import torch

    from latlab.engine.kernels import paged_decode_attention

    attend = paged_decode_attention(wait=True).fn
    tables, lens = scattered_tables(args.batch, context, args.cache_blocks, seed=context)
    q = torch.randn(args.batch, HEADS, HEAD_DIM).bfloat16()
    flush = None if hot else torch.ones(96 << 20 >> 2)

    def run(tiles: bool) -> float:
        return layers_pass(attend, q, caches, tables, lens, layers=args.layers, flush=flush,
                           hot=hot, tiles=tiles)  # fmt: skip

    return {name: (lambda tiles=tiles: run(tiles)) for name, tiles in PATHS.items()}


def measure(args) -> dict:
    import torch

    from latlab.engine.huge_pages import zeros_in_huge_pages
    from latlab.engine.kernels import amx_linear, paged_decode_attention

    if paged_decode_attention(wait=True).fn is None:
        raise SystemExit("no native attention kernel here")
    torch.set_num_threads(args.threads)
    shape = (args.cache_blocks, KV_HEADS, BLOCK, HEAD_DIM)  # the engine's layout
    caches = zeros_in_huge_pages(2 * args.layers, shape, torch.bfloat16)
    for cache in caches:
        cache.normal_()
    amx, why = amx_linear(wait=True)
    result: dict = {"threads": args.threads, "batch": args.batch, "amx": amx is not None,
                    "amx_reason": why, "rows": []}  # fmt: skip
    for context in [int(c) for c in args.contexts.split(",") if c]:
        kv_bytes = 2 * args.batch * context * KV_HEADS * HEAD_DIM * 2 * args.layers
        for hot in (False, True):
            got = interleaved(attention_runs(args, context, caches, hot), args.rounds)
            row = {"context": context, "hot": hot, "kv_bytes": kv_bytes, "seconds": got}
            result["rows"].append(row)
        print(f"context {context}: done", flush=True)
    return result


def report(result: dict) -> None:
    med = statistics.median
    print(f"\n{result['threads']} thread(s), batch {result['batch']}, AMX: {result['amx_reason']}")
    print("medians of interleaved rounds; GB/s of KV read")
    print(f"{'context':<14} {'vector':>20} {'tiles':>20} {'x':>6}")
    for row in result["rows"]:
        vec, til = med(row["seconds"]["vector"]), med(row["seconds"]["tiles"])
        rate = row["kv_bytes"] / 1e9
        label = f"{row['context']} {'hot' if row['hot'] else 'cold'}"
        print(f"{label:<14} {vec * 1e3:>8.2f} ms {rate / vec:>5.1f} GB/s "
              f"{til * 1e3:>8.2f} ms {rate / til:>5.1f} GB/s {vec / til:>5.2f}x")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args, measure, report, argv)


if __name__ == "__main__":
    main()
