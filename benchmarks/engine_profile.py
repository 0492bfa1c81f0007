"""Where a decode step's time goes: torch.profiler op times grouped by what they do.

Runs the engine on the reference model at one batch size (prompts prefilled, then a few warm
decode steps), profiles ``--steps`` decode steps and groups the CPU time of every op into:
linear layers (GEMMs, whatever kernel the weight plan chose), attention math, KV gathers
(``index_select`` of the paged cache), KV writes, elementwise work (norms, RoPE, SiLU, adds,
casts) and the rest; the step time outside the model's forward pass (scheduling, input tensors,
sampling, outputs) comes from the engine's own counters. torch.profiler does not see the native
kernels (pybind calls: the GEMMs, attention and fused step ops of the native paths), so
``--steps`` more steps run under cProfile, which times each of them
(``native_kernel_ms_per_step``, its own overhead included), each after a step timed with no
profiler (``plain_ms_per_step``, over the same contexts); the difference,
``outside_native_kernels_ms_per_step``, is what Python and torch dispatch cost a step.

    nice -n 10 .venv/bin/python benchmarks/engine_profile.py --batch 64 --threads 1
    nice -n 10 .venv/bin/python benchmarks/engine_profile.py --batch 64 --quantization int8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GROUPS = {
    "linear": ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise", "quantized::linear_dynamic",
               "aten::_weight_int8pack_mm", "aten::linear"),
    "attention": ("aten::bmm", "aten::_softmax", "aten::_scaled_dot_product",
                  "latlab::paged_decode_attention",
                  "aten::_scaled_dot_product_flash_attention_for_cpu"),
    "kv_gather": ("aten::index_select",),
    "kv_write": ("aten::index_copy_",),
    "elementwise": ("aten::mul", "aten::add", "aten::silu", "aten::_fused_rms_norm", "aten::pow",
                    "aten::rsqrt", "aten::mean", "aten::roll", "aten::copy_", "aten::div",
                    "aten::abs", "aten::amax", "aten::clamp", "aten::to", "aten::cat"),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=64, help="tokens before the profiled steps")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantization", default=None)
    p.add_argument("--no-native-attention", action="store_true", help="torch decode attention")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def group_of(name: str) -> str:
    for group, names in GROUPS.items():
        if any(name == n or name.startswith(n + "_") for n in names):
            return group
    return "other"


def decode_engine(args):  # type: ignore[no-untyped-def]
    from latlab.engine import EngineConfig, SamplingParams
    from latlab.engine.llm_engine import LLMEngine

    engine = LLMEngine(EngineConfig(
        model=str(args.model_dir), dtype=args.dtype, quantization=args.quantization,
        num_threads=args.threads, kv_cache_bytes=1 << 30, max_num_seqs=args.batch,
        native_attention=False if args.no_native_attention else None,
        max_num_batched_tokens=max(512, args.batch * args.context),
    ))  # fmt: skip
    params = SamplingParams(max_tokens=args.context + 3 * args.steps + 8, ignore_eos=True)
    for i in range(args.batch):
        prompt = [10 + (i * 7919 + j * 104729 + 17) % 4000 for j in range(args.context)]
        engine.add_request(prompt, params)
    for _ in range(4):  # prefill, then warm decode steps
        engine.step()
    return engine


def native_ms_per_step(stats: dict, steps: int) -> dict[str, float]:
    """Milliseconds a step in each of the engine's native kernels, from a ``pstats`` table: they
    are pybind functions, which torch.profiler does not see (on the native paths its groups
    hold a few ms of a step), while cProfile times every built-in call."""
    out: dict[str, float] = {}
    for (_, _, func), (_, _, tottime, _, _) in stats.items():
        module, _, name = func.removeprefix("<built-in method ").removesuffix(">").rpartition(".")
        if module.startswith("latlab_paged_attention_"):
            out[name] = out.get(name, 0.0) + tottime * 1e3 / steps
    return dict(sorted(out.items(), key=lambda item: -item[1]))


def native_kernels(engine, steps: int) -> tuple[dict[str, float], float]:  # type: ignore[no-untyped-def]
    """``steps`` decode steps under cProfile (each native kernel's ms a step), each after a step
    timed with no profiler attached (the plain wall ms a step, over the same contexts)."""
    import cProfile
    import pstats

    prof, plain = cProfile.Profile(), 0.0
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        plain += time.perf_counter() - start
        prof.enable()
        engine.step()
        prof.disable()
    native = native_ms_per_step(pstats.Stats(prof).stats, steps)  # type: ignore[attr-defined]
    return native, 1e3 * plain / steps


def profile(args) -> dict:  # type: ignore[no-untyped-def]
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    engine = decode_engine(args)
    before = engine.stats()
    start = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            engine.step()
    wall = time.perf_counter() - start
    after = engine.stats()
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        groups[group_of(event.key)] = groups.get(group_of(event.key), 0) + event.self_cpu_time_total
    total = sum(groups.values())
    step_s = after.step_seconds_total - before.step_seconds_total
    forward_s = after.forward_seconds_total - before.forward_seconds_total
    native, plain = native_kernels(engine, args.steps)
    return {
        "batch": args.batch, "context": args.context, "threads": args.threads,
        "plan": engine.describe(), "wall_ms_per_step_profiled": 1e3 * wall / args.steps,
        "op_cpu_ms_per_step": {g: t / 1e3 / args.steps for g, t in sorted(groups.items())},
        "op_share": {g: t / total for g, t in sorted(groups.items())},
        "outside_forward_share_of_step": (step_s - forward_s) / step_s,
        "native_kernel_ms_per_step": native, "plain_ms_per_step": plain,
        # Python, torch dispatch and the CPU side: what one native call per step could save
        "outside_native_kernels_ms_per_step": plain - sum(native.values()),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from latlab.engine.kernels import paged_decode_attention

    paged_decode_attention(wait=True)  # engines use the native kernel only once it is built
    result = profile(args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
