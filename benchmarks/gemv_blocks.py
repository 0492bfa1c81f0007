"""The native GEMV on plain rows against GEMV blocks, by the length of a weight row.

Why the engine lays out only rows shorter than 4 KiB (src/latlab/engine/models/gemv_blocks.py):
for each ``--shapes`` N x K, ``--layers`` distinct float32 weights (so they stream from memory,
as a decode step's do) in huge pages where the kernel allows, each as plain rows and as GEMV
blocks; one x row per call (batch 1; ``--rows`` for more); rounds interleaved (rows, blocks,
rows, ...), GB/s of weights read, medians, and blocks / rows per shape.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/gemv_blocks.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # engine_batch1.py sits beside this script
from engine_batch1 import interleaved, run_benchmark

# (N, K): 2-24 KiB rows; 768-column ones are the reference model's qkv / o / gate_up
SHAPES = "2048x512,1536x768,6144x768,2048x1024,2048x1280,768x1536,768x2048,768x3072,768x6144"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=SHAPES, help="comma-separated NxK (N of 4s, K of 16s)")
    p.add_argument("--layers", type=int, default=12, help="distinct weights per shape")
    p.add_argument("--rows", type=int, default=1, help="x rows per call (1-4)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def shape_list(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        n, sep, k = item.strip().partition("x")
        if not sep or not n.isdigit() or not k.isdigit() or int(n) % 4 or int(k) % 16:
            raise SystemExit(f"--shapes {item!r}: NxK with N a multiple of 4 and K of 16 expected")
        shapes.append((int(n), int(k)))
    return shapes


def readers(args: argparse.Namespace) -> dict[str, Callable[[], float]]:
    """Per shape and layout, a pass over its weights returning GB/s."""
    import torch

    from latlab.engine.huge_pages import move_to_huge_pages
    from latlab.engine.kernels import small_linear
    from latlab.engine.models.gemv_blocks import blocks_of

    gemv = small_linear(wait=True).fn
    if gemv is None:
        raise SystemExit(f"the native GEMV is not built here: {small_linear(wait=True).reason}")
    fns = {}
    for n, k in shape_list(args.shapes):
        holder = torch.nn.Module()
        for i in range(args.layers):
            rows = torch.randn(n, k)
            holder.register_buffer(f"rows{i}", rows)
            holder.register_buffer(f"blocks{i}", blocks_of(rows))
        move_to_huge_pages(holder)
        x = torch.randn(args.rows, k)
        for layout in ("rows", "blocks"):
            weights = [getattr(holder, f"{layout}{i}") for i in range(args.layers)]

            def run(weights=weights, x=x) -> float:
                start = time.perf_counter()
                for w in weights:
                    gemv(x, w, None)
                return sum(w.numel() * 4 for w in weights) / (time.perf_counter() - start) / 1e9

            fns[f"{n}x{k} {layout}"] = run
    return fns


def measure(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    rounds = interleaved(readers(args), args.rounds)
    shapes = {}
    for n, k in shape_list(args.shapes):
        rows = statistics.median(rounds[f"{n}x{k} rows"])
        blocks = statistics.median(rounds[f"{n}x{k} blocks"])
        shapes[f"{n}x{k}"] = {"row_bytes": 4 * k, "rows_gb_s": rows, "blocks_gb_s": blocks,
                              "blocks_over_rows": blocks / rows}  # fmt: skip
    return {"threads": args.threads, "rows": args.rows, "layers": args.layers,
            "rounds": args.rounds, "shapes": shapes}  # fmt: skip


def report(result: dict) -> None:
    print(f"native GEMV, {result['rows']} x row(s), {result['threads']} thread(s), "
          f"{result['layers']} weights a shape, median of {result['rounds']} rounds")  # fmt: skip
    print(f"{'shape':>11} {'row':>7} {'rows GB/s':>10} {'blocks GB/s':>12} {'blocks/rows':>12}")
    for shape, s in result["shapes"].items():
        print(f"{shape:>11} {s['row_bytes'] / 1024:5.1f}Ki {s['rows_gb_s']:10.1f} "
              f"{s['blocks_gb_s']:12.1f} {s['blocks_over_rows']:11.2f}x")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args, measure, report, argv)


if __name__ == "__main__":
    main()
