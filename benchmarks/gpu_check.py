"""Prove the engine's CUDA path in one run: greedy parity, speed vs ``generate``, limits, recipes.

Needs only PyTorch and transformers (no network, nothing to install) and a copy of this
repository; finishes in under 8 minutes on one H100/H200:

    python benchmarks/gpu_check.py --json gpu_check.json

What it does, in order (each section is skipped, with the reason, when time runs short):

1. parity: the engine's greedy tokens against transformers ``generate`` on the device, for the
   bundled model and random GQA / Qwen2-bias / Llama-3 models, float32 and bfloat16, with the
   default settings, chunked prefill, prefix-cache hits and forced preemption. A differing
   token passes only where transformers' own two candidates are tied within rounding (gap
   below 1e-3 in float32; in bfloat16 below 0.1 or two bf16 steps at the logits' size); the
   engine's logits (``score``) are compared too;
2. limits: the device's memory read bandwidth and its float32 / TF32 / bf16 matmul rates;
3. speed: engine vs ``generate`` (bf16) at batch 1 / 64 / 256 on the ~106M reference model and a
   ~1B random Llama (Llama-3.2-1B's shape), each against the bandwidth and bf16 limits;
4. recipes the machine's packages allow: TF32, ``torch.compile`` of the engine, transformers
   with the flash SDPA backend; CUDA graphs are reported as not adopted by the engine.

One JSON summary goes to stdout (and ``--json``, rewritten after every section, so a run killed
at its time limit still leaves what it measured); the exit code is 1 if any check failed.
``--device cpu --smoke`` runs the same code on tiny models in seconds (CI runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # a copy of the repository, nothing installed

import torch  # noqa: E402

from latlab.engine import LLM, SamplingParams  # noqa: E402
from latlab.engine.roofline import (  # noqa: E402
    decode_cost,
    measure_matmul_rate,
    measure_read_bandwidth,
)
from latlab.testing.random_model import (  # noqa: E402
    REFERENCE_106M,
    TINY_TEST,
    LlamaShape,
    save_random_llama,
)

LLAMA_1B = LlamaShape(  # Llama-3.2-1B's shape with the bundled tokenizer's 4k vocabulary
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=8192,
    tie_word_embeddings=True,
    rope_theta=500000.0,
)
QWEN2 = dataclasses.replace(TINY_TEST, model_type="qwen2")
LLAMA3 = LlamaShape(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
    intermediate_size=96, tie_word_embeddings=True, rope_theta=500000.0,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
)  # fmt: skip
TIE_GAP = {torch.float32: 1e-3, torch.bfloat16: 0.1}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(kw_only=True, slots=True)
class Run:
    """Settings of one invocation and what it found."""

    device: torch.device
    smoke: bool
    budget_s: float
    workdir: Path
    started: float = dataclasses.field(default_factory=time.perf_counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ---- models -------------------------------------------------------------------------------


def model_dir(run: Run, name: str, shape: LlamaShape, dtype: str = "float32", seed: int = 1) -> str:
    out = run.workdir / f"{name}-{dtype}"
    if not (out / "model.safetensors").exists():
        save_random_llama(out, shape, dtype=dtype, seed=seed)
    if name == "qwen2":
        add_biases(out)
    return str(out)


def add_biases(directory: Path) -> None:
    """Qwen2's q/k/v biases are zero after random init, which would test nothing."""
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    state = load_file(str(path))
    if any(n.endswith("_proj.bias") and state[n].abs().sum() > 0 for n in state):
        return
    gen = torch.Generator().manual_seed(0)
    for name, tensor in state.items():
        if name.endswith("_proj.bias"):
            state[name] = (torch.randn(tensor.shape, generator=gen) * 0.5).to(tensor.dtype)
    save_file(state, str(path), metadata={"format": "pt"})


def hf_model(path: str, dtype: torch.dtype, device: torch.device, attn: str = "sdpa"):
    """transformers' model through the project's loader, which names the dtype the way the
    installed transformers expects (``torch_dtype`` before 4.56, ``dtype`` after)."""
    from latlab.dtypes import dtype_name
    from latlab.model_files import load_causal_lm

    return load_causal_lm(
        path, dtype=dtype_name(dtype), device=str(device), attn_implementation=attn
    )


def prompts(count: int, vocab: int = 4000, seed: int = 0) -> list[list[int]]:
    """Mixed lengths (3..40 tokens), deterministic: the engine tests' prompts."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [3, 40, 9, 17, 1, 26, 33, 5][:count]
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


def distinct_prompts(n: int, length: int = 6, vocab: int = 4096) -> list[list[int]]:
    span = vocab - 10
    return [[10 + (i * 7919 + j * 104729 + 17) % span for j in range(length)] for i in range(n)]


# ---- 1. parity ----------------------------------------------------------------------------


@torch.inference_mode()
def hf_greedy(model, prompt: list[int], new: int) -> list[int]:
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         do_sample=False, pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


@torch.inference_mode()
def tie_gap(model, context: list[int], a: int, b: int) -> tuple[float, float]:
    """transformers' logit gap between two candidate tokens after ``context``, and the larger
    of the two logits' magnitudes."""
    logits = model(input_ids=torch.tensor([context], device=model.device)).logits[0, -1].float()
    return float((logits[a] - logits[b]).abs()), float(logits[[a, b]].abs().max())


def is_rounding_tie(dtype: torch.dtype, gap: float, magnitude: float) -> bool:
    """A gap within TIE_GAP, or within two rounding steps of the dtype at the logits' size (a
    bf16 logit near 16 moves in steps of 0.0625: a fixed 0.1 would fail correct kernels)."""
    return gap <= max(TIE_GAP[dtype], 2 * torch.finfo(dtype).eps * max(magnitude, 1.0))


def compare_greedy(model, dtype: torch.dtype, ps: list[list[int]], got: list[list[int]], new: int):
    """(exact prompts, tied prompts, failures): a difference passes only at a rounding tie."""
    exact, ties, bad = 0, 0, []
    for prompt, mine in zip(ps, got, strict=True):
        ref = hf_greedy(model, prompt, new)
        if mine == ref:
            exact += 1
            continue
        i = next((k for k, (x, y) in enumerate(zip(mine, ref, strict=False)) if x != y), None)
        if i is None:  # one stopped at EOS earlier: a real difference
            bad.append(f"prompt of {len(prompt)}: lengths {len(mine)} vs {len(ref)}")
            continue
        gap, magnitude = tie_gap(model, prompt + ref[:i], mine[i], ref[i])
        if is_rounding_tie(dtype, gap, magnitude):
            ties += 1
        else:
            bad.append(f"prompt of {len(prompt)}: token {i} {mine[i]} vs {ref[i]} (gap {gap:.3g})")
    return exact, ties, bad


PARITY_CONFIGS = {
    "default": {},
    "chunked-prefill-8": {"max_num_batched_tokens": 8},
    "no-prefix-cache-block-4": {"enable_prefix_caching": False, "block_size": 4},
    "preemption": {"block_size": 4, "kv_cache_blocks": 14, "max_num_batched_tokens": 16},
}


def engine_config(run: Run, path: str, dtype: str, config: dict) -> dict:
    config = dict(config)
    out = {"device": run.device.type, "dtype": dtype, **config}
    blocks = out.pop("kv_cache_blocks", None)
    if blocks is not None:  # exactly this many KV blocks, to force preemption
        from latlab.model_files import load_model_config
        from latlab.plan.kv import kv_bytes_per_token

        per_token = kv_bytes_per_token(load_model_config(path), dtype)
        out["kv_cache_bytes"] = blocks * config["block_size"] * per_token
    else:
        out.setdefault("kv_cache_bytes", 64 << 20)
    return out


def parity_case(run: Run, name: str, path: str, dtype: str, configs: dict, new: int) -> dict:
    torch_dtype = DTYPES[dtype]
    model = hf_model(path, torch_dtype, run.device)
    ps = prompts(4 if run.smoke else 6)
    result = {"model": name, "dtype": dtype, "configs": {}}
    for cname, config in configs.items():
        llm = LLM(path, **engine_config(run, path, dtype, config))
        params = SamplingParams(max_tokens=new)
        passes = 2 if cname == "default" else 1  # the second pass hits the prefix cache
        for rep in range(passes):
            got = [o.token_ids for o in llm.generate(ps, params)]
            exact, ties, bad = compare_greedy(model, torch_dtype, ps, got, new)
            stats = llm.engine.stats()
            key = cname if rep == 0 else "prefix-cache-hits"
            result["configs"][key] = {"exact": exact, "ties": ties, "failures": bad,
                                      "preemptions": stats.num_preemptions,
                                      "prefix_cache_hits": stats.prefix_cache_hits}  # fmt: skip
            run.failures += [f"parity {name} {dtype} {key}: {b}" for b in bad]
        if cname == "preemption" and llm.engine.stats().num_preemptions == 0:
            run.failures.append(f"parity {name} {dtype}: the preemption case never preempted")
    result["logits"] = logits_check(run, model, LLM(path, **engine_config(run, path, dtype, {})))
    return result


@torch.inference_mode()
def logits_check(run: Run, model, llm) -> dict:
    """The engine's own logits for a prompt against transformers' (same device and dtype)."""
    seq = prompts(2, seed=7)[1]
    mine = llm.engine.runner.score(seq).float()
    ref = model(input_ids=torch.tensor([seq], device=run.device)).logits[0].float()
    diff = (mine - ref.to(mine.device)).abs()
    agree = (mine.argmax(-1) == ref.argmax(-1).to(mine.device)).float().mean()
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "logit_std": float(ref.std()), "top1_agreement": float(agree)}  # fmt: skip


def parity(run: Run) -> list[dict]:
    from latlab.assets import bundled_model_path

    cases = [("tiny-gqa", TINY_TEST), ("qwen2-bias", QWEN2), ("llama3-tied", LLAMA3)]
    paths = [("bundled", str(bundled_model_path()))]
    paths += [(n, model_dir(run, n if n != "qwen2-bias" else "qwen2", s)) for n, s in cases]
    dtypes = ["float32", "bfloat16"]
    configs = PARITY_CONFIGS
    if run.smoke:
        paths, configs = paths[1:2], {k: PARITY_CONFIGS[k] for k in ("default", "preemption")}
    results = []
    for name, path in paths:
        for dtype in dtypes:
            if run.left_s() < 60:
                run.skipped[f"parity {name} {dtype}"] = "time budget"
                continue
            results.append(parity_case(run, name, path, dtype, configs, 4 if run.smoke else 10))
    return results


# ---- 2. limits ----------------------------------------------------------------------------


def limits(run: Run) -> dict:
    dev, size = run.device, (256 if run.smoke else 8192)
    out = {"read_bandwidth_bytes_s": measure_read_bandwidth(dev, (64 if run.smoke else 4096) << 20)}
    out["matmul_flop_s"] = {"float32": measure_matmul_rate(size, dtype=torch.float32, device=dev)}
    out["matmul_flop_s"]["bfloat16"] = measure_matmul_rate(size, dtype=torch.bfloat16, device=dev)
    if dev.type == "cuda":
        with tf32(True):
            out["matmul_flop_s"]["tf32"] = measure_matmul_rate(
                size, dtype=torch.float32, device=dev
            )
    out["matmul_size"] = size
    return out


@contextlib.contextmanager
def tf32(enabled: bool):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# ---- 3. speed -----------------------------------------------------------------------------


def _median_tok_s(run: Run, fn, tokens: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        run.sync()
        start = time.perf_counter()
        fn()
        run.sync()
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def engine_tok_s(run: Run, llm, ps: list[list[int]], new: int, repeats: int = 2) -> float:
    params = SamplingParams(max_tokens=new, ignore_eos=True)
    llm.generate(ps, SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up at this batch
    return _median_tok_s(run, lambda: llm.generate(ps, params), len(ps) * new, repeats)


@torch.inference_mode()
def hf_tok_s(run: Run, model, ps: list[list[int]], new: int, repeats: int = 2) -> float:
    ids = torch.tensor(ps, device=run.device)

    def go(n: int = new) -> None:
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                       min_new_tokens=n, do_sample=False, pad_token_id=0)  # fmt: skip

    go(4)
    return _median_tok_s(run, go, len(ps) * new, repeats)


def speed_engine(run: Run, path: str, batches: list[int], **options) -> LLM:
    kv = (64 << 20) if run.smoke else (8 << 30)
    return LLM(path, device=run.device.type, dtype="bfloat16", kv_cache_bytes=kv,
               max_num_seqs=max(batches), max_num_batched_tokens=max(512, 8 * max(batches)),
               **options)  # fmt: skip


def speed_case(run: Run, name: str, path: str, batches: list[int], lim: dict) -> list[dict]:
    new = 8 if run.smoke else 128
    llm, model = speed_engine(run, path, batches), hf_model(path, torch.bfloat16, run.device)
    bandwidth, peak = lim["read_bandwidth_bytes_s"], lim["matmul_flop_s"]["bfloat16"]
    rows = []
    for batch in batches:
        ps = distinct_prompts(batch)
        ours, theirs = engine_tok_s(run, llm, ps, new), hf_tok_s(run, model, ps, new)
        cost = decode_cost(llm.engine.runner.model, batch=batch, context=6 + new // 2,
                           kv_bytes_per_cached_token=llm.engine.kv_bytes_per_token)  # fmt: skip
        rows.append({
            "model": name, "batch": batch, "engine_tok_s": ours, "generate_tok_s": theirs,
            "x_generate": ours / theirs, "bytes_per_token": cost.bytes_per_token,
            "flops_per_token": cost.flops_per_token,
            "bandwidth_limit_tok_s": bandwidth / cost.bytes_per_token,
            "bf16_limit_tok_s": peak / cost.flops_per_token,
            "fraction_of_bandwidth_limit": ours / (bandwidth / cost.bytes_per_token),
            "fraction_of_bf16_limit": ours / (peak / cost.flops_per_token),
        })  # fmt: skip
    del llm, model
    return rows


def speed(run: Run, lim: dict) -> list[dict]:
    batches = [1, 4] if run.smoke else [1, 64, 256]
    models = [("ref-106m", TINY_TEST if run.smoke else REFERENCE_106M)]
    if not run.smoke:
        models.append(("llama-1b", LLAMA_1B))
    rows = []
    for name, shape in models:
        needed = 60 if run.smoke else (240 if name == "llama-1b" else 90)
        if run.left_s() < needed:
            run.skipped[f"speed {name}"] = f"time budget ({run.left_s():.0f} s left)"
            continue
        path = model_dir(run, name, shape, dtype="bfloat16", seed=0)
        rows += speed_case(run, name, path, batches, lim)
    return rows


# ---- 4. recipes ---------------------------------------------------------------------------


def recipe_tf32(run: Run, path: str) -> dict:
    if run.device.type != "cuda":
        return {"status": "skipped", "reason": "TF32 is a CUDA matmul mode"}
    ps, new = distinct_prompts(64), 64
    llm = LLM(path, device="cuda", dtype="float32", kv_cache_bytes=2 << 30)
    with tf32(False):
        off = engine_tok_s(run, llm, ps, new)
        plain = [o.token_ids for o in llm.generate(ps[:8], SamplingParams(max_tokens=16))]
    with tf32(True):
        on = engine_tok_s(run, llm, ps, new)
        fast = [o.token_ids for o in llm.generate(ps[:8], SamplingParams(max_tokens=16))]
    same = sum(a == b for a, b in zip(plain, fast, strict=True)) / len(plain)
    return {"status": "measured", "batch": 64, "float32_tok_s": off, "tf32_tok_s": on,
            "speedup": on / off, "greedy_exact_match": same}  # fmt: skip


def compiler_missing() -> str | None:
    """Inductor's GPU kernels need a host C compiler (Triton builds a launcher with it)."""
    if shutil.which("cc") or shutil.which("gcc") or os.environ.get("CC"):
        return None
    return "no C compiler on this machine (Triton's launcher needs cc, gcc or $CC)"


def recipe_compile(run: Run, path: str) -> dict:
    if run.smoke:
        return {"status": "skipped", "reason": "smoke mode (compiling takes minutes)"}
    if run.left_s() < 180:  # the budget leaves ~90 s past it before the 8 minutes are up
        return {"status": "skipped", "reason": f"time budget ({run.left_s():.0f} s left)"}
    if run.device.type == "cuda" and (missing := compiler_missing()):
        return {"status": "unavailable", "reason": missing}
    llm = speed_engine(run, path, [64], compile=True)
    out: dict = {"status": "measured"}
    for batch in (1, 64):
        ps = distinct_prompts(batch)
        start = time.perf_counter()  # past the first KV block: every shape the timed runs meet
        llm.generate(ps, SamplingParams(max_tokens=64, ignore_eos=True))
        run.sync()
        out[f"first_run_s_batch_{batch}"] = time.perf_counter() - start
        out[f"compiled_tok_s_batch_{batch}"] = engine_tok_s(run, llm, ps, 64)
    eager = speed_engine(run, path, [64])
    for batch in (1, 64):
        out[f"eager_tok_s_batch_{batch}"] = engine_tok_s(run, eager, distinct_prompts(batch), 64)
        out[f"speedup_batch_{batch}"] = out[f"compiled_tok_s_batch_{batch}"] / out[
            f"eager_tok_s_batch_{batch}"]  # fmt: skip
    return out


def recipe_flash(run: Run, path: str) -> dict:
    if run.device.type != "cuda":
        return {"status": "skipped", "reason": "the flash SDPA backend is CUDA-only"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, ps = hf_model(path, torch.bfloat16, run.device), distinct_prompts(64)
    default = hf_tok_s(run, model, ps, 64)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = hf_tok_s(run, model, ps, 64)
    except RuntimeError as exc:
        return {"status": "unavailable", "reason": str(exc).splitlines()[0][:200]}
    return {
        "status": "measured", "batch": 64, "generate_sdpa_default_tok_s": default,
        "generate_flash_tok_s": flash, "speedup": flash / default,
        "engine": "not applicable: the engine's prefill passes a boolean paged mask, which the "
        "flash kernel does not take; its decode uses batched matmuls",
    }  # fmt: skip


def recipes(run: Run) -> dict:
    path = model_dir(run, "ref-106m", TINY_TEST if run.smoke else REFERENCE_106M, "bfloat16", 0)
    out = {}
    for name, fn in (("tf32", recipe_tf32), ("flash_sdpa", recipe_flash),
                     ("torch_compile", recipe_compile)):  # fmt: skip
        try:
            out[name] = fn(run, path)
        except Exception as exc:  # a recipe that crashes is a failure, the run goes on
            run.failures.append(f"recipe {name} crashed: {type(exc).__name__}: {exc}"[:300])
            out[name] = {"status": "failed", "traceback": traceback.format_exc(limit=3)}
    out["cuda_graphs"] = {
        "status": "not adopted",
        "reason": "the engine does not capture CUDA graphs for decode yet",
    }
    return out


# ---- the run ------------------------------------------------------------------------------


def environment(run: Run) -> dict:
    import transformers

    env = {"device": str(run.device), "torch": torch.__version__,
           "transformers": transformers.__version__, "smoke": run.smoke,
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    if run.device.type == "cuda":
        props = torch.cuda.get_device_properties(run.device)
        env |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        }
    else:
        env["torch_threads"] = torch.get_num_threads()
    return env


def closed(run: Run, summary: dict, *, partial: bool) -> dict:
    """The summary with the verdict so far (``partial`` until every section has run)."""
    elapsed = round(time.perf_counter() - run.started, 1)
    return summary | {"failures": run.failures, "skipped": run.skipped, "ok": not run.failures,
                      "partial": partial, "elapsed_s": elapsed}  # fmt: skip


def sections(run: Run, summary: dict, checkpoint: Callable[[], object] = lambda: None) -> None:
    """Each section in turn; ``checkpoint()`` after each (the JSON written so far)."""
    steps = [
        ("parity", lambda: parity(run)),
        ("limits", lambda: limits(run)),
        ("speed", lambda: speed(run, summary["limits"])),
        ("recipes", lambda: recipes(run)),
    ]
    for name, step in steps:
        if name == "speed" and "limits" not in summary:
            run.skipped[name] = "no limits measured"
            continue
        try:
            summary[name] = step()
        except Exception as exc:
            run.failures.append(f"{name} crashed: {type(exc).__name__}: {exc}"[:300])
            summary[f"{name}_traceback"] = traceback.format_exc(limit=5)
        checkpoint()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--smoke", action="store_true", help="tiny models, seconds (CI on CPU)")
    p.add_argument("--budget-s", type=float, default=390.0, help="stop starting sections after")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"ok": False, "failures": ["no CUDA device here"]}))
        return 1

    def write(summary: dict) -> str:
        text = json.dumps(summary, indent=2, default=str)
        if args.json:
            args.json.write_text(text + "\n")
        return text

    with tempfile.TemporaryDirectory(prefix="latlab-gpu-check-") as tmp:
        run = Run(device=device, smoke=args.smoke, budget_s=args.budget_s, workdir=Path(tmp))
        summary: dict = {"environment": environment(run)}
        sections(run, summary, lambda: write(closed(run, summary, partial=True)))
    summary = closed(run, summary, partial=False)
    print(write(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
