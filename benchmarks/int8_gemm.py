"""W8A8 GEMMs on AMX int8 tiles against bf16 GEMMs on AMX bf16 tiles, the engine's two kernels.

The ~106M reference model's linear shapes (qkv 1536x768, o 768x768, gate_up 6144x768, down
768x3072) for ``--layers`` layers, each weight its own (so they stream from memory as in a
decode step), at ``--rows`` rows; each int8 call quantizes its input rows, as the torch path's
int8 layers do. Rounds interleaved, medians.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/int8_gemm.py
"""

from __future__ import annotations

import argparse
import statistics
import time

SHAPES = ((1536, 768), (768, 768), (6144, 768), (768, 3072))  # (N, K) of the reference model


def main() -> None:
    import torch

    from latlab.engine.kernels import amx_int8, amx_linear
    from latlab.engine.models.int8_linear import quantize_per_channel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    (bf16, why_bf16), (int8, why_int8) = amx_linear(wait=True), amx_int8(wait=True)
    if bf16 is None or int8 is None:
        raise SystemExit(f"needs both AMX kernels: {why_bf16 or 'ok'}; {why_int8 or 'ok'}")
    torch.set_num_threads(args.threads)
    weights = [torch.randn(n, k) for _ in range(args.layers) for n, k in SHAPES]
    packed_bf16 = [bf16.pack(w.bfloat16()) for w in weights]
    packed_int8 = [(int8.pack(q), s) for q, s in map(quantize_per_channel, weights)]
    inputs = [torch.randn(args.rows, k).bfloat16() for _, k in SHAPES]

    def timed(call) -> float:
        start = time.perf_counter()
        for i in range(len(weights)):
            call(i, inputs[i % len(SHAPES)])
        return time.perf_counter() - start

    runs: dict[str, list[float]] = {"bf16": [], "int8": []}
    for _ in range(args.rounds):
        runs["bf16"].append(timed(lambda i, x: bf16.linear(x, packed_bf16[i], None)))
        runs["int8"].append(timed(lambda i, x: int8.linear(x, *packed_int8[i], None)))
    b, q = (statistics.median(runs[k]) * 1e3 for k in ("bf16", "int8"))
    print(f"{args.layers} layers' GEMMs at {args.rows} rows, {args.threads} threads: "
          f"bf16 tiles {b:.2f} ms, int8 tiles {q:.2f} ms ({b / q:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
