"""Micro-measurements behind the engine's speed levers (docs/engine.md, "What each lever gave").

Shapes are the reference model's (hidden 768, 12 heads, 6 KV heads, head_dim 64, MLP 3072).
Times are CPU time per call (``time.process_time``), median of --repeats rounds, so a busy
shared machine disturbs them less than wall time; threads are stated.

    nice -n 10 .venv/bin/python benchmarks/engine_levers.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from latlab.engine.models.packed_linear import onednn_available

BF16 = torch.bfloat16


def cpu_ms(fn, calls: int = 20, repeats: int = 5) -> float:
    fn()
    rounds = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            fn()
        rounds.append((time.process_time() - start) / calls * 1e3)
    return statistics.median(rounds)


def linear_lever(repeats: int) -> dict:
    """F.linear vs oneDNN-prepacked weights: 8 gate_up-sized matrices (75 MB of bf16)."""
    weights = [torch.randn(6144, 768, dtype=BF16) for _ in range(8)]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 64) for w in weights]
    out = {}
    for rows in (1, 64):
        x = torch.randn(rows, 768, dtype=BF16)
        plain = cpu_ms(lambda x=x: [F.linear(x, w) for w in weights], repeats=repeats)
        fast = cpu_ms(
            lambda x=x: [
                torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "") for p in packed
            ],
            repeats=repeats,
        )
        same = torch.equal(
            F.linear(x, weights[0]),
            torch.ops.mkldnn._linear_pointwise(x, packed[0], None, "none", [], ""),
        )
        out[f"rows_{rows}"] = {"f_linear_ms": plain, "packed_ms": fast, "bit_identical": same}
    return out


def attention_lever(repeats: int) -> dict:
    """Decode attention, batch 64, 80 cached tokens: SDPA vs two batched matmuls."""
    b, kv_heads, heads, head_dim, block, blocks = 64, 6, 12, 64, 16, 5
    cache = torch.randn(kv_heads, 4000, block, head_dim, dtype=BF16)
    flat = torch.randint(0, 4000, (b * blocks,))
    t = blocks * block
    q = torch.randn(b, heads, 1, head_dim, dtype=BF16)
    lengths = torch.randint(60, t, (b,))
    mask = torch.arange(t).view(1, 1, 1, t) < lengths.view(b, 1, 1, 1)
    bias = torch.zeros(1, b, 1, t).masked_fill(~mask.view(1, b, 1, t), float("-inf"))

    def gather():
        return cache.index_select(1, flat).view(kv_heads, b, t, head_dim)

    def sdpa():
        k, v = gather(), gather()
        return F.scaled_dot_product_attention(
            q, k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, enable_gqa=True
        )

    def matmuls():
        k, v = gather(), gather()
        qg = q.view(b, kv_heads, heads // kv_heads, head_dim).transpose(0, 1)
        scores = torch.matmul(qg, k.transpose(2, 3)).float() * head_dim**-0.5 + bias
        return torch.matmul(scores.softmax(-1).to(BF16), v)

    return {
        "sdpa_ms": cpu_ms(sdpa, repeats=repeats),
        "matmuls_ms": cpu_ms(matmuls, repeats=repeats),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "attention_per_layer": attention_lever(args.repeats)}
    if onednn_available():
        result["linear_8x_6144x768"] = linear_lever(args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
