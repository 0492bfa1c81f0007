"""Where a batch decode step's time goes: each phase of the native step beside the machine's probes.

The native batch decode step (5-64 rows on AMX tiles in bf16, or on the AVX2 FMA panels in
float32 with ``--dtype float32``; ``kernels/decode_batch.cpp``) times its
phases when asked (``BatchDecodeModel.time_phases``): the embedding, norms, W8A8's activation
quantization, the four GEMMs, attention (RoPE, the new K and V written, the paged cache read),
SiLU * up, the head, and the waits at barriers. For each plan (``--quantization`` x
``--kv-cache-dtypes`` x ``--block-sizes``) this runs ``LLM.generate`` of ``--batch`` distinct
prompts x ``--output-len`` tokens (``engine_speed.py``'s prompts) for ``--rounds`` rounds, the
plans' engines loaded together and their rounds interleaved (each round runs every plan once,
so a slow minute falls on all of them), and prints, per decode step and per thread (each phase
summed over the threads, divided by their count):

- each phase's milliseconds and share of the forward pass;
- the GEMMs beside the same-shape GEMM probe's time for the step's linear layers (the rate
  ``engine_speed.py``'s "GEMM %" divides by), measured here before the rounds;
- each GEMM phase's GFLOP/s (its layers' FLOPs at the step's rows over its time), and the GEMMs'
  against the CPU's float32 FMA peak (``cpu_peak.py`` at the run's threads, probed before the
  engines load): how far the batch step's arithmetic is from the hardware's (AMX tiles can pass
  it: it is the vector units' peak);
- attention beside the time the step's KV (the context each decode step reads, all layers)
  takes at the read-bandwidth probe's rate;
- the step's time outside the forward pass (scheduling, inputs, sampling, outputs).

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/decode_phases.py \\
        --json benchmarks/results/decode_phases_2026-12-01.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # engine_speed.py sits beside this script
from engine_speed import GEMM_PHASES, distinct_prompts, ensure_model, fma_peak


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16",
                   help="bfloat16 (AMX tiles) or float32 (the AVX2 FMA panels)")  # fmt: skip
    p.add_argument("--batch", type=int, default=64, help="5-64: the native batch step's rows")
    p.add_argument("--prompt-len", type=int, default=6)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quantization", default="none,int8", help="comma-separated: none, int8")
    p.add_argument("--kv-cache-dtypes", default="auto,int8", help="comma-separated")
    p.add_argument("--block-sizes", default="16", help="comma-separated KV cache block sizes")
    p.add_argument("--json", type=Path, help="write the per-round figures here")
    args = p.parse_args(argv)
    if not 5 <= args.batch <= 64:
        p.error(f"--batch {args.batch}: the native batch step runs 5-64 rows")
    return args


def plans(args) -> list[dict]:
    """Every (quantization, KV cache dtype, block size) the run compares."""
    return [{"quantization": q, "kv_cache_dtype": kv, "block_size": int(bs)}
            for q in args.quantization.split(",") for kv in args.kv_cache_dtypes.split(",")
            for bs in args.block_sizes.split(",")]  # fmt: skip


def load_engine(args, plan: dict):
    from latlab.engine import LLM

    quantization = plan["quantization"]
    llm = LLM(
        str(args.model_dir), dtype=args.dtype, kv_cache_dtype=plan["kv_cache_dtype"],
        kv_cache_bytes=1 << 30, quantization=None if quantization == "none" else quantization,
        num_threads=args.threads, max_num_seqs=args.batch, block_size=plan["block_size"],
    )  # fmt: skip
    decoder = llm.engine.runner.batch_decoder
    if decoder is None:
        sys.exit(f"no native batch decode step for this plan: {llm.engine.runner.batch_reason}")
    return llm, decoder


def gemm_probe_seconds(llm, batch: int) -> float:
    """One pass of the model's linear layers at ``batch`` rows at the same-shape GEMM rate."""
    from latlab.engine.roofline import linear_layers, measure_linear_rate

    runner = llm.engine.runner
    layers = linear_layers(runner.model)
    rate = measure_linear_rate(runner.model, batch=batch, dtype=runner.weight_plan.compute_dtype,
                               device=runner.device)  # fmt: skip
    return 2 * batch * sum(m.in_features * m.out_features for m in layers) / rate


def gemm_flops(model, batch: int) -> dict[str, float]:
    """FLOPs of each GEMM phase of one decode step at ``batch`` rows: its linear layers (qkv,
    o, gate_up and down of every decoder layer; the head) by their names in the model."""
    from latlab.engine.roofline import linear_layers

    linears = {id(m) for m in linear_layers(model)}
    flops = dict.fromkeys(GEMM_PHASES, 0.0)
    for name, module in model.named_modules():
        phase = name.rsplit(".", 1)[-1].removesuffix("_proj").removeprefix("lm_")
        if id(module) in linears and phase in flops:
            flops[phase] += 2.0 * batch * module.in_features * module.out_features
    return flops


def kv_bytes_read(llm, args) -> float:
    """The KV all decode steps of one round read: each sequence's whole context, all layers."""
    contexts = range(args.prompt_len + 1, args.prompt_len + args.output_len)
    return args.batch * sum(contexts) * llm.engine.kv_bytes_per_token


def one_round(llm, decoder, prompts, output_len: int) -> dict:
    """Phase seconds (summed over threads), decode steps and step split of one generate call."""
    from latlab.engine import SamplingParams

    params = SamplingParams(max_tokens=output_len, ignore_eos=True)
    before = llm.engine.stats()
    decoder.time_phases(True)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    phases = dict(decoder.phase_seconds())
    decoder.time_phases(False)
    after = llm.engine.stats()
    assert all(len(o.token_ids) == output_len for o in outs)
    return {
        "phase_s": phases, "elapsed_s": elapsed, "tok_s": len(prompts) * output_len / elapsed,
        "steps": after.steps_total - before.steps_total,
        "step_s": after.step_seconds_total - before.step_seconds_total,
        "forward_s": after.forward_seconds_total - before.forward_seconds_total,
    }  # fmt: skip


def per_step(rounds: list[dict], threads: int, decode_steps: int) -> dict:
    """Median over rounds of each phase's ms per decode step per thread, and of the step parts
    (all sequences decode together: ``decode_steps`` batch steps a round)."""

    def med(values) -> float:
        return 1e3 * statistics.median(values)

    phases = {name: med(r["phase_s"][name] / threads / decode_steps for r in rounds)
              for name in rounds[0]["phase_s"]}  # fmt: skip
    return {
        "phases_ms": phases,
        "step_ms": med(r["step_s"] / r["steps"] for r in rounds),
        "forward_ms": med(r["forward_s"] / r["steps"] for r in rounds),
        "tok_s": statistics.median(r["tok_s"] for r in rounds),
    }


def plan_label(plan: dict) -> str:
    return (f"{plan['quantization']} weights, {plan['kv_cache_dtype']} KV cache, blocks of "
            f"{plan['block_size']}")  # fmt: skip


def run_plans(args, bandwidth: float, peak: float | None) -> list[dict]:
    """Each plan's engine loaded and warmed up, its GEMM probe taken, then the rounds: every
    plan once a round, in the same order."""
    vocab = json.loads((args.model_dir / "config.json").read_text())["vocab_size"]
    prompts = distinct_prompts(args.batch, args.prompt_len, vocab)
    engines = []
    for plan in plans(args):
        print(f"{plan_label(plan)}: loading ...", flush=True)
        llm, decoder = load_engine(args, plan)
        one_round(llm, decoder, prompts, args.output_len)  # warm-up: pages, pools, branches
        engines.append((plan, llm, decoder, gemm_probe_seconds(llm, args.batch)))
    rounds: list[list[dict]] = [[] for _ in engines]
    for i in range(args.rounds):
        for got, (plan, llm, decoder, _) in zip(rounds, engines, strict=True):
            got.append(one_round(llm, decoder, prompts, args.output_len))
            print(f"  round {i + 1}/{args.rounds}, {plan_label(plan)}: "
                  f"{got[-1]['tok_s']:,.1f} tok/s", flush=True)  # fmt: skip
    return [summarize(args, plan, llm, got, probe_s, bandwidth, peak)
            for got, (plan, llm, _, probe_s) in zip(rounds, engines, strict=True)]  # fmt: skip


def summarize(args, plan: dict, llm, rounds: list[dict], probe_s: float, bandwidth: float,
              peak: float | None) -> dict:  # fmt: skip
    decode_steps = args.output_len - 1  # the first token comes from the prefill step
    summary = per_step(rounds, args.threads, decode_steps)
    kv_per_step = kv_bytes_read(llm, args) / decode_steps
    summary.update({
        "plan": plan,
        "gemm_probe_ms": 1e3 * probe_s,
        "kv_read_ms_at_probe": 1e3 * kv_per_step / bandwidth,
        "kv_mb_per_step": kv_per_step / 1e6,
        "gemm_gflop_per_step": {k: v / 1e9 for k, v in gemm_flops(llm.engine.runner.model,
                                                                  args.batch).items()},
        "fma_peak_gflop_s": None if peak is None else peak / 1e9,
        "rounds": rounds,
    })  # fmt: skip
    return summary


def print_plan(s: dict) -> None:
    phases, forward = s["phases_ms"], sum(s["phases_ms"].values())
    plan = s["plan"]
    print(f"\n{plan_label(plan)}: {s['tok_s']:,.1f} tok/s, a decode step {s['step_ms']:.2f} ms")
    gflop = s["gemm_gflop_per_step"]
    print(f"{'phase':<12} {'ms/step':>8} {'share':>6} {'GFLOP/s':>8}")
    for name, ms in phases.items():
        if ms > 0:
            rate = f"{gflop[name] / ms * 1e3:>8.1f}" if name in gflop else ""
            print(f"{name:<12} {ms:>8.2f} {100 * ms / forward:>5.1f}% {rate}")
    gemm = sum(phases[g] for g in GEMM_PHASES)
    print(f"GEMMs {gemm:.2f} ms ({100 * gemm / forward:.0f}% of the forward pass): "
          f"{100 * s['gemm_probe_ms'] / gemm:.0f}% of the same-shape probe's rate (it would take "
          f"{s['gemm_probe_ms']:.2f} ms)")  # fmt: skip
    print(gemm_against_peak(sum(gflop.values()) / gemm * 1e3, s["fma_peak_gflop_s"]))
    print(f"attention {phases['attention']:.2f} ms; its {s['kv_mb_per_step']:.1f} MB of KV at the "
          f"read probe's rate {s['kv_read_ms_at_probe']:.2f} ms")  # fmt: skip
    outside = s["step_ms"] - s["forward_ms"]
    print(f"outside the forward pass {outside:.2f} ms ({100 * outside / s['step_ms']:.1f}%)")


def gemm_against_peak(gflop_s: float, peak: float | None) -> str:
    if peak is None:
        return f"GEMMs at {gflop_s:.1f} GFLOP/s (FMA peak not measured)"
    return (f"GEMMs at {gflop_s:.1f} GFLOP/s: {100 * gflop_s / peak:.0f}% of the float32 FMA "
            f"peak ({peak:.1f} GFLOP/s, probed before the engines loaded)")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from latlab.engine.roofline import measure_read_bandwidth

    ensure_model(args.model_dir)
    peak = fma_peak(args.threads).get(args.threads)  # before any engine's threads exist
    torch.set_num_threads(args.threads)
    bandwidth = measure_read_bandwidth(torch.device("cpu"))
    print(f"read probe {bandwidth / 1e9:.1f} GB/s; {args.threads} threads, batch {args.batch}, "
          f"{args.prompt_len}-token prompts, {args.output_len} tokens")  # fmt: skip
    results = run_plans(args, bandwidth, peak)
    for s in results:
        print_plan(s)
    if args.json:
        out = {"args": {k: str(v) for k, v in vars(args).items()}, "read_bandwidth": bandwidth,
               "plans": results}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
