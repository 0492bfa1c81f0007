"""Micro-measurements behind the engine's speed levers (docs/engine.md, "What each lever gave").

Shapes are the reference model's (hidden 768, 12 layers, 12 heads, 6 KV heads, head_dim 64, MLP
3072). Each lever times the same work with and without it: CPU time per call
(``time.process_time``), median of --repeats rounds, the variants interleaved round by round,
so a busy shared machine disturbs both sides alike. Threads are stated.

    nice -n 10 .venv/bin/python benchmarks/engine_levers.py --threads 1
    nice -n 10 .venv/bin/python benchmarks/engine_levers.py --levers compile   # minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from latlab.engine.kernels import paged_decode_attention
from latlab.engine.models.int8_linear import Int8Linear
from latlab.engine.models.llama import gather_heads
from latlab.engine.models.packed_linear import PackedLinear, onednn_packs

H, INTER, L, HEADS, KV_HEADS, D = 768, 3072, 12, 12, 6, 64
QKV = HEADS * D + 2 * KV_HEADS * D


def cpu_ms(variants: dict[str, Callable[[], object]], calls: int, repeats: int) -> dict:
    """CPU ms per call of each variant, rounds interleaved (A B A B ...), medians."""
    for fn in variants.values():
        fn()
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.process_time()
            for _ in range(calls):
                fn()
            rounds[name].append((time.process_time() - start) / calls * 1e3)
    return {name: round(statistics.median(r), 3) for name, r in rounds.items()}


def _layer_linears(dtype: torch.dtype = torch.float32) -> dict[str, nn.Linear]:
    torch.manual_seed(0)
    shapes = {
        "q": (H, HEADS * D),
        "k": (H, KV_HEADS * D),
        "v": (H, KV_HEADS * D),
        "qkv": (H, QKV),
        "gate": (H, INTER),
        "up": (H, INTER),
        "gate_up": (H, 2 * INTER),
    }
    return {n: nn.Linear(i, o, bias=False).to(dtype) for n, (i, o) in shapes.items()}


def lever_linear_kernels(calls: int, repeats: int) -> dict:
    """One layer's four GEMMs (qkv, o, gate_up, down) x 12 layers: each weight-plan kernel."""
    torch.manual_seed(0)
    shapes = [(H, QKV), (HEADS * D, H), (H, 2 * INTER), (INTER, H)] * L
    layers = [nn.Linear(i, o, bias=False) for i, o in shapes]
    kernels: dict[str, list[nn.Module]] = {"f32 F.linear": layers}
    if onednn_packs(torch.float32):
        kernels["f32 oneDNN-packed"] = [PackedLinear(m, 64) for m in layers]
    kernels["bf16 F.linear"] = [nn.Linear(m.in_features, m.out_features, bias=False).bfloat16()
                                for m in layers]  # fmt: skip
    kernels["int8 (W8A8, per-token)"] = [Int8Linear(m, "int8") for m in layers]
    kernels["int8 weight-only"] = [Int8Linear(m, "int8-weight-only") for m in layers]
    out = {}
    for rows in (1, 64):
        inputs = {n: torch.randn(rows, n) for n in (H, INTER, HEADS * D)}

        def run(mods: list[nn.Module], rows_in: dict = inputs) -> None:
            with torch.inference_mode():
                for m in mods:
                    x = rows_in[m.in_features]
                    m(x.bfloat16() if isinstance(m, nn.Linear) and m.weight.dtype != x.dtype else x)

        variants = {name: (lambda mods=mods: run(mods)) for name, mods in kernels.items()}
        out[f"rows_{rows}_ms_per_model_pass"] = cpu_ms(variants, 1 if rows == 64 else 3, repeats)
    return out


def lever_fused_projections(calls: int, repeats: int) -> dict:
    """q, k, v (and gate, up) as separate GEMMs vs one fused GEMM, per plan kernel."""
    lin = _layer_linears()
    out = {}
    for kernel in ("f32 F.linear", "int8"):
        wrap = (lambda m: m) if kernel == "f32 F.linear" else (lambda m: Int8Linear(m, "int8"))
        mods = {n: wrap(m) for n, m in lin.items()}
        for rows in (1, 64):
            x = torch.randn(rows, H)
            variants = {
                "separate q,k,v + gate,up": lambda m=mods, x=x: [m[n](x) for n in
                                                                ("q", "k", "v", "gate", "up")],
                "fused qkv + gate_up": lambda m=mods, x=x: [m["qkv"](x), m["gate_up"](x)],
            }  # fmt: skip
            with torch.inference_mode():
                out[f"{kernel}, rows {rows}"] = cpu_ms(variants, calls, repeats)
    return out


def _paged_cache(b: int, context: int, kv_dtype: torch.dtype):  # type: ignore[no-untyped-def]
    block, per_seq = 16, -(-context // 16)
    cache_blocks = b * per_seq + 8
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(cache_blocks, KV_HEADS, block, D, generator=gen).to(kv_dtype)  # the engine's
    v = torch.randn(cache_blocks, KV_HEADS, block, D, generator=gen).to(kv_dtype)  # layout
    tables = torch.randperm(cache_blocks, generator=gen)[: b * per_seq].view(b, per_seq)
    lens = torch.full((b,), context, dtype=torch.long)
    return k, v, tables, lens, block


def _decode_attention_variants(context: int, kernel_fn: Callable | None) -> dict:
    """Batch 64 decode over bf16 KV: the gathered torch path and, when built, the native one."""
    b = 64
    k, v, tables, lens, block = _paged_cache(b, context, torch.bfloat16)
    q = torch.randn(b, HEADS, D)
    t = tables.shape[1] * block
    bias = torch.zeros(1, b, 1, t).masked_fill(
        torch.arange(t).view(1, 1, 1, t) >= lens.view(1, b, 1, 1), float("-inf"))  # fmt: skip

    def gathered() -> torch.Tensor:
        keys = gather_heads(k, tables.view(-1), b).float()
        values = gather_heads(v, tables.view(-1), b).float()
        qg = q.view(b, KV_HEADS, HEADS // KV_HEADS, D).transpose(0, 1)
        scores = torch.matmul(qg, keys.transpose(2, 3)) * D**-0.5 + bias
        return torch.matmul(scores.softmax(-1), values)

    variants: dict[str, Callable[[], object]] = {"gather + matmuls": gathered}
    if kernel_fn is not None:
        variants["native, in place"] = lambda: kernel_fn(q, k, v, tables, lens, D**-0.5)
    return variants


def lever_decode_attention(calls: int, repeats: int) -> dict:
    """One layer's decode attention at batch 64 over the paged cache (bf16 KV, fp32 queries):
    gather + batched matmuls (+ dtype copies) vs the native kernel reading in place."""
    kernel = paged_decode_attention()
    out: dict = {}
    for context in (80, 512):
        variants = _decode_attention_variants(context, kernel.fn)
        out[f"context_{context}"] = cpu_ms(variants, calls, repeats)
    out["native"] = kernel.reason
    return out


def lever_compile(calls: int, repeats: int) -> dict:
    """torch.compile (inductor, static shapes) of one decoder layer at batch 64 decode, plain
    float32 linears and the gathered attention (what compile can trace): compile time, ms."""
    from latlab.engine.models.config import parse_model_args
    from latlab.engine.models.llama import AttentionMetadata, DecoderLayer
    from latlab.testing.random_model import REFERENCE_106M, build_config

    raw = build_config(REFERENCE_106M).to_dict() | {"architectures": ["LlamaForCausalLM"]}
    args = parse_model_args(raw)
    layer = DecoderLayer(args).eval()
    b, context = 64, 80
    k, v, tables, lens, block = _paged_cache(b, context, torch.float32)
    t = tables.shape[1] * block
    bias = torch.zeros(1, b, 1, t).masked_fill(
        torch.arange(t).view(1, 1, 1, t) >= lens.view(1, b, 1, 1), float("-inf"))  # fmt: skip
    slots = tables[:, -1] * block + (context - 1) % block
    meta = AttentionMetadata(slots, tables, None, bias, None, None, 1)
    x, cos, sin = torch.randn(b, H), torch.randn(b, 1, D), torch.randn(b, 1, D)
    compiled = torch.compile(layer, dynamic=False)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(x, cos, sin, k, v, meta)
        compile_s = time.perf_counter() - start
        variants = {"eager": lambda: layer(x, cos, sin, k, v, meta),
                    "compiled": lambda: compiled(x, cos, sin, k, v, meta)}  # fmt: skip
        result = cpu_ms(variants, calls, repeats)
    return {"first_call_s": round(compile_s, 1), "ms_per_layer": result}


LEVERS = {
    "linear_kernels": lever_linear_kernels,
    "fused_projections": lever_fused_projections,
    "decode_attention": lever_decode_attention,
    "compile": lever_compile,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--levers", default="linear_kernels,fused_projections,decode_attention")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"threads": args.threads, "loadavg": os.getloadavg()}
    for name in args.levers.split(","):
        result[name] = LEVERS[name](args.calls, args.repeats)
        print(json.dumps({name: result[name]}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
