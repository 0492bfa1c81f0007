"""float32 GEMMs of the engine's AVX2 panel kernel against oneDNN's packed GEMM and F.linear.

The ~106M reference model's linear shapes (qkv 1536x768, o 768x768, gate_up 6144x768, down
768x3072), ``--layers`` weights of each shape (so they stream from memory as in a decode step),
at each of ``--rows`` rows; rounds interleaved (F.linear, oneDNN, panels, F.linear, ...),
medians; GFLOP/s per shape and in all, beside the float32 FMA peak measured in the same run
(benchmarks/cpu_peak.py) at the same thread count.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/f32_gemm.py --rows 8,64,256

``--builds`` adds the panel GEMM of other built kernel modules (``.so`` paths, e.g. an older
checkout's, kept under ``$TORCH_EXTENSIONS_DIR``) as ``panels@<name>``, interleaved with the rest:
a kernel change measured against the build before it in one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # cpu_peak.py sits beside this script
import cpu_peak
from kernel_builds import load_module

SHAPES = ((1536, 768), (768, 768), (6144, 768), (768, 3072))  # (N, K) of the reference model


def _multipliers(
    layers: int, builds: list[str]
) -> tuple[dict[str, list[Callable]], list[tuple[int, int]]]:
    """Per kernel, one call per weight (``layers`` of each shape, in model order); each other
    build's panels on weights packed by that build."""
    import torch.nn.functional as F
    from torch import nn

    from latlab.engine.kernels import f32_panels
    from latlab.engine.models.packed_linear import PackedLinear

    panels, why = f32_panels(wait=True)
    if panels is None:
        raise SystemExit(f"the panel GEMM is not available here: {why}")
    shapes = [shape for _ in range(layers) for shape in SHAPES]
    linears = [nn.Linear(k, n, bias=False) for n, k in shapes]
    onednn = [PackedLinear(linear, batch_hint=64) for linear in linears]
    packed = [panels.pack(linear.weight.detach()) for linear in linears]
    calls = {
        "F.linear": [lambda x, w=lin.weight: F.linear(x, w) for lin in linears],
        "oneDNN-packed": [lambda x, m=m: m(x) for m in onednn],
        "panels": [lambda x, p=p: panels.linear(x, p, None) for p in packed],
    }
    for entry in builds:
        module = load_module(entry)
        weights = [module.f32_pack(linear.weight.detach()) for linear in linears]
        calls[f"panels@{Path(entry).stem}"] = [
            lambda x, p=p, m=module: m.f32_panel_linear(x, p, None) for p in weights
        ]
    return calls, shapes


def measure(
    rows: int, layers: int, rounds: int, builds: Sequence[str] = ()
) -> dict[str, dict[str, float]]:
    """GFLOP/s per kernel, per shape and in all, at ``rows`` rows (median over rounds)."""
    import torch

    calls, shapes = _multipliers(layers, list(builds))
    inputs = {k: torch.randn(rows, k) for _, k in SHAPES}
    seconds: dict[str, dict[tuple[int, int], list[float]]] = {
        name: {shape: [] for shape in SHAPES} for name in calls
    }
    with torch.no_grad():
        for _ in range(rounds):
            for name in calls:
                spent = dict.fromkeys(SHAPES, 0.0)
                for call, shape in zip(calls[name], shapes, strict=True):
                    start = time.perf_counter()
                    call(inputs[shape[1]])
                    spent[shape] += time.perf_counter() - start
                for shape in SHAPES:
                    seconds[name][shape].append(spent[shape])
    flop = {shape: 2.0 * rows * shape[0] * shape[1] * layers for shape in SHAPES}
    result = {}
    for name in calls:
        per = {f"{n}x{k}": flop[(n, k)] / statistics.median(seconds[name][(n, k)]) / 1e9
               for n, k in SHAPES}  # fmt: skip
        total = sum(statistics.median(seconds[name][shape]) for shape in SHAPES)
        result[name] = {**per, "all": sum(flop.values()) / total / 1e9}
    return result


def print_table(result: dict[str, dict[str, float]], peak_gflop: float | None) -> None:
    """One line per kernel, then the panels against oneDNN and against each other build."""
    width = max(map(len, result)) + 2
    print(f"{'kernel':<{width}}" + "".join(f"{key:>11}" for key in result["panels"]) + "  % peak")
    for name, figures in result.items():
        share = f"{100 * figures['all'] / peak_gflop:6.0f}%" if peak_gflop else "     -"
        print(f"{name:<{width}}" + "".join(f"{v:11.1f}" for v in figures.values()) + f"  {share}")
    for name in ["oneDNN-packed", *(key for key in result if key.startswith("panels@"))]:
        print(f"panels / {name} in all: {result['panels']['all'] / result[name]['all']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="64", help="comma-separated row counts")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--builds", default="", help="paths of other builds' .so files, comma-separated")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    builds = [entry for entry in args.builds.split(",") if entry]
    torch.set_num_threads(args.threads)
    peak = cpu_peak.measure([args.threads])
    peak_gflop = peak[args.threads] / 1e9 if isinstance(peak, dict) else None
    print(f"float32 FMA peak at {args.threads} threads: "
          + (f"{peak_gflop:.1f} GFLOP/s" if peak_gflop else f"not measured ({peak})"))  # fmt: skip
    out = {"threads": args.threads, "layers": args.layers, "peak_gflop_s": peak_gflop, "rows": {}}
    for rows in (int(r) for r in args.rows.split(",")):
        result = measure(rows, args.layers, args.rounds, builds)
        out["rows"][rows] = result
        print(f"\n{rows} rows, GFLOP/s (median of {args.rounds} rounds; % of peak in all)")
        print_table(result, peak_gflop)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
