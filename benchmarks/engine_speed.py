"""latlab engine throughput vs vLLM CPU and transformers ``generate``, against the machine's limits.

One run measures, on the ~106M reference model (bf16 checkpoint, a distinct 6-token prompt per
request, 128 greedy output tokens, EOS ignored):

- the machine: memory read bandwidth (before and after the engine runs), the GEMM rate of each
  engine variant's own linear kernels at every batch size, threads and load average;
- latlab's engine in its default plan for this CPU and with each ``--quantization``, and
  transformers ``generate`` (static batch, sdpa), interleaved A B C A B C; tok/s medians;
- the engine's CPU-side step overhead (step time outside the model's forward pass), and where
  its native batch step runs (5-64 rows on AMX), the GEMMs' share of its steps by the step's own
  phase clock: the GEMM rate reached against the same kernels inside the step, beside the share
  of the probe's rate;
- vLLM CPU 0.32 in each of ``--vllm-dtypes`` x ``--vllm-binds`` (each in its own process
  group, stopped whole at the end, EngineCore children included); the anchor is its fastest
  variant. By default (``--vllm-pairing interleaved``) each variant loads once before latlab,
  waits paused (SIGSTOP: no CPU taken) and runs one round after each of latlab's, and a read
  bandwidth and GEMM probe open every round: on a machine whose speed drifts by tens of percent
  within minutes, every median, ratio and fraction then comes from the same minutes
  (benchmarks/anchor_rounds.py). ``after`` runs vLLM's own repeats once latlab is done;
- shared-prefix TTFT with prefix caching on and off;

then a roofline table (bytes and FLOPs per token vs measured rates) and the goals of issue 16
as ratios from this run.

    nice -n 10 .venv/bin/python benchmarks/engine_speed.py --batches 1,64 --repeats 3 \\
        --quantization none,int8 --json /tmp/engine_speed.json

``--threads`` pins the engine's thread count; by default the engine chooses (one per core that
other jobs leave free) and the run records its choice. ``--dtype`` is the compute dtype of every
system (default: bfloat16 where the CPU has bf16 instructions, else float32, since emulated bf16
GEMMs are ~150x slower there and vLLM's bf16 run would take most of an hour); the checkpoint
stays bf16. ``--vllm-dtypes bfloat16,float32`` runs vLLM in both and anchors on the faster;
``--vllm-binds`` does the same for its thread binding (default: its own ``auto``, which computes
on one core of two here, and every core).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VLLM_SCRIPT = REPO / "benchmarks" / "anchors" / "vllm_offline.py"
DOC_ANCHORS = {  # benchmarks.md, "Anchors measured here" (tok/s, bf16, an AVX-512 BF16 EPYC)
    "vllm_cpu": {1: 97, 8: 562, 64: 1248},
    "transformers_generate": {1: 60, 8: 345, 64: 739},
}
GOAL_VS_VLLM, GOAL_GEMM_FRACTION, GOAL_BANDWIDTH_FRACTION = 1.5, 0.75, 0.9
GEMM_PHASES = ("qkv", "o", "gate_up", "down", "head")  # the native batch step's (phase_clock.h)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--prompt-len", type=int, default=6)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="default: the engine's choice")
    p.add_argument("--quantization", default="none,int8", help="engine variants, e.g. none,int8")
    p.add_argument(
        "--kv-cache-dtypes",
        default="auto",
        help="KV cache variants of each engine, e.g. auto,fp8_e5m2 (auto: the weights' dtype)",
    )
    p.add_argument("--compile", action="store_true", help="engine with torch.compile")
    p.add_argument("--no-hf", action="store_true", help="skip transformers generate")
    p.add_argument("--no-vllm", action="store_true", help="skip vLLM even if installed")
    p.add_argument(
        "--vllm-python",
        default=None,
        help="the vLLM venv's python (default: beside LATLAB_VLLM_CMD / vllm on PATH / "
        "scripts/install_vllm_cpu.sh's venv, else /tmp/vllm-venv from anchors/install.sh)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        help="compute dtype of latlab, generate and vLLM (default: bfloat16 where the CPU has bf16 "
        "instructions, else float32: emulated bf16 GEMMs run ~150x slower than float32 there)",
    )
    p.add_argument("--vllm-dtypes", default=None, help="default: --dtype (e.g. bfloat16,float32)")
    p.add_argument(
        "--vllm-binds",
        default="auto,all",
        help="vLLM thread bindings to run (VLLM_CPU_OMP_THREADS_BIND; 'all' = every usable core); "
        "the anchor is the fastest",
    )
    p.add_argument("--vllm-timeout", type=float, default=3600.0, help="seconds per vLLM run")
    p.add_argument(
        "--vllm-pairing",
        choices=("interleaved", "after"),
        default="interleaved",
        help="interleaved: vLLM loads once per variant and runs one round after each of "
        "latlab's (paused in between); after: vLLM's own repeats once latlab's are done",
    )
    p.add_argument("--no-prefix", action="store_true", help="skip the shared-prefix workload")
    p.add_argument("--prefix-len", type=int, default=512)
    p.add_argument("--prefix-requests", type=int, default=64)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.dtype is None:
        from latlab.engine.hardware import cpu_capabilities

        args.dtype = "bfloat16" if cpu_capabilities().native_bf16 else "float32"
    args.vllm_dtypes = args.vllm_dtypes or args.dtype
    return args


def distinct_prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    """The same prompts as benchmarks/anchors/vllm_offline.py (distinct, no shared prefix)."""
    lo = 10
    span = max(vocab - lo, 1)
    return [[lo + (i * 7919 + j * 104729 + 17) % span for j in range(length)] for i in range(n)]


def ensure_model(model_dir: Path) -> Path:
    if not (model_dir / "model.safetensors").exists():
        from latlab.testing.random_model import REFERENCE_106M, save_random_llama

        save_random_llama(model_dir, REFERENCE_106M, dtype="bfloat16")
    return model_dir


# ---- one timed run of each system ------------------------------------------------------------


def time_engine(llm, prompts, output_len: int) -> tuple[float, float, dict]:
    """Wall tok/s, CPU tok/s, and the step-time split of this run (EngineStats deltas; with the
    native batch step, the GEMM phases' share of its time too, from its phase clock)."""
    from latlab.engine import SamplingParams
    from latlab.engine.kernels import DECODE_MAX_ROWS

    params = SamplingParams(max_tokens=output_len, ignore_eos=True)
    decoder = llm.engine.runner.batch_decoder if len(prompts) > DECODE_MAX_ROWS else None
    if decoder is not None:
        decoder.time_phases(True)  # ~20 ns a phase: ~5 us a step of ~15-20 ms
    before = llm.engine.stats()
    start, cpu = time.perf_counter(), time.process_time()
    outs = llm.generate(prompts, params)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = llm.engine.stats()
    gemm_share = None  # of the native steps' time, all threads (the thread count may change)
    if decoder is not None:
        phases = dict(decoder.phase_seconds())
        decoder.time_phases(False)
        gemm_share = sum(phases[p] for p in GEMM_PHASES) / max(sum(phases.values()), 1e-12)
    assert all(len(o.token_ids) == output_len for o in outs)
    steps = after.steps_total - before.steps_total
    step_s = after.step_seconds_total - before.step_seconds_total
    forward_s = after.forward_seconds_total - before.forward_seconds_total
    split = {"steps": steps, "step_s": step_s, "forward_s": forward_s, "gemm_share": gemm_share}
    tokens = len(prompts) * output_len
    return tokens / elapsed, tokens / cpu, split


def time_hf(model, prompts, output_len: int) -> tuple[float, float]:
    import torch

    ids = torch.tensor(prompts)
    with torch.inference_mode():
        start, cpu = time.perf_counter(), time.process_time()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=output_len,
            min_new_tokens=output_len,
            do_sample=False,
            pad_token_id=0,
        )
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert out.shape[1] == ids.shape[1] + output_len
    return len(prompts) * output_len / elapsed, len(prompts) * output_len / cpu


# ---- the machine's limits, in this run ------------------------------------------------------


def gemm_rates(engines: dict, batch: int) -> dict[str, float]:
    """FLOP/s of each variant's own linear kernels at ``batch`` rows (the same-shape GEMM rate):
    the native GEMV where the engine's decode steps of this many rows use it, else the layers'
    own forward."""
    from latlab.engine.kernels import DECODE_MAX_ROWS, small_linear
    from latlab.engine.roofline import measure_linear_rate

    rates = {}
    for name, llm in engines.items():
        runner = llm.engine.runner
        steps_native = runner.native_step is not None and batch <= DECODE_MAX_ROWS
        native = small_linear(wait=False).fn if steps_native else None
        rates[name] = measure_linear_rate(
            runner.model, batch=batch, dtype=runner.weight_plan.compute_dtype,
            device=runner.device, linear=native,
        )  # fmt: skip
    return rates


def beside(module: str):  # type: ignore[no-untyped-def]
    """A script that sits beside this one in benchmarks/ (not a package), imported."""
    import importlib

    here = str(Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(module)


def usable_threads() -> int:
    return len(os.sched_getaffinity(0))


def fma_peak(threads: int) -> dict[int, float]:
    """The CPU's float32 FMA peak at 1..``threads`` threads (benchmarks/cpu_peak.py); empty
    (and said) where it cannot be measured."""
    measure_peak = beside("cpu_peak").measure

    got = measure_peak(list(range(1, threads + 1)))
    if isinstance(got, str):
        print(f"FMA peak not measured: {got}")
        return {}
    return got


def peak_at(threads: int, before: dict[int, float]) -> float | None:
    """The peak at the engines' thread count: the larger of a measurement before the engines
    loaded and one after the run (a ceiling: anything lower was another job's doing)."""
    after = fma_peak(threads).get(threads)
    got = [v for v in (before.get(threads), after) if v]
    return max(got) if got else None


def bandwidth() -> float:
    import torch

    from latlab.engine.roofline import measure_read_bandwidth

    return measure_read_bandwidth(torch.device("cpu"))


# ---- throughput -------------------------------------------------------------------------


def throughput(args, engines: dict, hf_model, vocab: int, anchors: dict) -> list[dict]:
    """Per batch, ``--repeats`` rounds of: the probes (read bandwidth, each variant's GEMM
    rate), each latlab variant, ``generate``, then each paused anchor's round; so every
    system's medians and every probe come from the same minutes."""
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = distinct_prompts(batch, args.prompt_len, vocab)
        for llm in engines.values():
            time_engine(llm, prompts, 8)  # warm-up at this batch shape
        if hf_model is not None:
            time_hf(hf_model, prompts, 8)
        rounds = [time_round(args, engines, hf_model, anchors, prompts)
                  for _ in range(args.repeats)]  # fmt: skip
        rows.append(batch_row(batch, rounds))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def time_round(args, engines: dict, hf_model, anchors: dict, prompts) -> dict:
    """One round at one batch: probes, then every system once, A B C A B C."""
    batch = len(prompts)
    got: dict = {"bandwidth_bytes_s": bandwidth(), "gemm_flop_s": gemm_rates(engines, batch)}
    got["engines"] = {name: time_engine(llm, prompts, args.output_len)
                      for name, llm in engines.items()}  # fmt: skip
    if hf_model is not None:
        got["hf"] = time_hf(hf_model, prompts, args.output_len)
    got["anchors"] = anchor_rounds(anchors, batch)
    return got


def anchor_rounds(anchors: dict, batch: int) -> dict[str, float]:
    """One round of each paused anchor; one that fails is reported, stopped and dropped from
    ``anchors`` (its rounds so far stay out of this batch's figures, the others go on)."""
    got = {}
    for label, anchor in list(anchors.items()):
        try:
            got[label] = anchor.round(batch)["tok_per_s"]
        except beside("anchor_rounds").AnchorError as exc:
            print(f"vLLM {label} dropped: {exc}", flush=True)
            anchor.close()
            del anchors[label]
    return got


def batch_row(batch: int, rounds: list[dict]) -> dict:
    """One batch's rounds summed up: medians per system and probe, the rounds kept."""
    row: dict = {"batch": batch, "rounds": len(rounds)}
    row["bandwidth_bytes_s"] = [r["bandwidth_bytes_s"] for r in rounds]
    rates = {name: [r["gemm_flop_s"][name] for r in rounds] for name in rounds[0]["gemm_flop_s"]}
    row["gemm_flop_s_rounds"] = rates
    row["gemm_flop_s"] = {name: statistics.median(v) for name, v in rates.items()}
    row["engines"] = {name: summarise_runs([r["engines"][name] for r in rounds])
                      for name in rounds[0]["engines"]}  # fmt: skip
    if "hf" in rounds[0]:
        row["hf_tok_s"] = [r["hf"][0] for r in rounds]
        row["hf_tok_s_median"] = statistics.median(row["hf_tok_s"])
    every_round = [label for label in rounds[0]["anchors"]
                   if all(label in r["anchors"] for r in rounds)]  # fmt: skip
    if every_round:
        row["vllm_rounds"] = {label: [r["anchors"][label] for r in rounds]
                              for label in every_round}  # fmt: skip
    return row


def summarise_runs(runs: list[tuple[float, float, dict]]) -> dict:
    walls = [r[0] for r in runs]
    splits = [r[2] for r in runs]
    step_s = sum(s["step_s"] for s in splits)
    forward_s = sum(s["forward_s"] for s in splits)
    steps = sum(s["steps"] for s in splits)
    return {
        "tok_s": walls,
        "tok_s_median": statistics.median(walls),
        "tok_per_cpu_s_median": statistics.median(r[1] for r in runs),
        "steps": steps,
        "step_ms_mean": 1e3 * step_s / max(steps, 1),
        "outside_forward_ms_per_step": 1e3 * (step_s - forward_s) / max(steps, 1),
        "outside_forward_fraction": (step_s - forward_s) / step_s if step_s else 0.0,
        # the GEMMs' own time inside the steps (phase clock), not a probe's: their share of it
        "gemm_share_of_steps": (
            sum(s["gemm_share"] * s["forward_s"] for s in splits) / step_s
            if step_s and all(s["gemm_share"] is not None for s in splits)
            else None
        ),
    }


# ---- shared prefix -------------------------------------------------------------------------


def shared_prefix_ttft(args, model_dir: Path, vocab: int, caching: bool) -> dict:
    import random

    from latlab.engine import EngineConfig, SamplingParams
    from latlab.engine.llm_engine import LLMEngine

    engine = LLMEngine(
        EngineConfig(
            model=str(model_dir),
            dtype=args.dtype,
            kv_cache_bytes=2 << 30,
            num_threads=args.threads,
            enable_prefix_caching=caching,
            max_num_seqs=args.prefix_requests,
        )
    )
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    p50s = []
    for rep in range(args.repeats):
        rng = random.Random(1000 + rep)
        prefix = [rng.randrange(10, vocab) for _ in range(args.prefix_len)]
        for i in range(args.prefix_requests):
            tail = [rng.randrange(10, vocab) for _ in range(16)]
            engine.add_request(prefix + tail, params, request_id=f"{rep}-{i}")
        ttfts = {}
        while engine.has_unfinished():
            for out in engine.step():
                if out.finished:
                    m = out.metrics
                    ttfts[out.request_id] = (m.first_token_ns - m.arrival_ns) / 1e6
        p50s.append(statistics.median(ttfts.values()))
    stats = engine.stats()
    return {
        "prefix_caching": caching,
        "ttft_p50_ms": p50s,
        "ttft_p50_ms_median": statistics.median(p50s),
        "prefix_cache_hits": stats.prefix_cache_hits,
        "prefix_cache_queries": stats.prefix_cache_queries,
    }


# ---- vLLM, in its own process group ------------------------------------------------------------


def run_anchor(argv: list[str], out: Path, env: dict[str, str], timeout_s: float) -> dict | None:
    """Run an anchor script to completion and stop whatever it leaves behind.

    vLLM's offline script ends with ``os._exit`` while its EngineCore and Worker processes may
    still be shutting down (or, on a timeout, still computing); they share the script's process
    group, which ``ManagedProcess.stop`` ends whole.
    """
    from latlab.procs import ManagedProcess, ProcessSpec

    spec = ProcessSpec(argv=argv, name="anchor", env=env, log_path=out.with_suffix(".log"))
    proc = ManagedProcess(spec).start()
    try:
        code = proc.wait(timeout_s)
    finally:
        proc.stop(grace_s=5.0)
    if code != 0 or not out.exists():
        why = "timed out" if code is None else f"rc={code}"
        print(f"anchor {argv[1:2]} failed ({why}):\n{proc.log_tail()}", flush=True)
        return None
    return json.loads(out.read_text())


def run_vllm(args, model_dir: Path, dtype: str, bind: str) -> dict | None:
    python = vllm_python(args)
    if python is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vllm.json"
        cmd = [str(python), str(VLLM_SCRIPT), str(model_dir), "--batches", args.batches]
        cmd += ["--repeats", str(args.repeats), "--output-len", str(args.output_len)]
        cmd += ["--prompt-len", str(args.prompt_len), "--dtype", dtype, "--out", str(out)]
        cmd += ["--omp-bind", vllm_bind(bind)]
        return run_anchor(cmd, out, {"VLLM_CPU_KVCACHE_SPACE": "1"}, args.vllm_timeout)


def vllm_python(args) -> Path | None:
    """The vLLM venv's interpreter for the anchor, or None (said once) when it is skipped."""
    if args.no_vllm:
        return None
    anchor = beside("vllm_anchor")
    python = anchor.anchor_python(args.vllm_python)
    if python.exists():
        return python
    if not getattr(args, "vllm_missing_said", False):
        print(anchor.missing_note(python), flush=True)
        args.vllm_missing_said = True
    return None


def vllm_bind(bind: str) -> str:
    """``all`` as the core list vLLM 0.32 parses (it takes a list, ``auto`` or ``nobind``)."""
    if bind != "all":
        return bind
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def vllm_variants(args) -> list[tuple[str, str, str]]:
    """(label, dtype, binding) of each vLLM run: every ``--vllm-dtypes`` x ``--vllm-binds``."""
    return [(f"{dtype} bind={bind}", dtype, bind)
            for dtype in [d for d in args.vllm_dtypes.split(",") if d]
            for bind in [b for b in args.vllm_binds.split(",") if b]]  # fmt: skip


def start_anchors(args, model_dir: Path, stack: contextlib.ExitStack) -> dict:
    """Each vLLM variant loaded, warmed up and paused, for ``time_round`` to run in turn with
    latlab's; ``stack`` stops them. A variant that fails to load is reported and left out."""
    rounds = beside("anchor_rounds")
    python = vllm_python(args)
    if python is None:
        return {}
    anchors = {}
    for label, dtype, bind in vllm_variants(args):
        argv = [str(python), str(VLLM_SCRIPT), str(model_dir), "--batches", args.batches]
        argv += ["--output-len", str(args.output_len), "--prompt-len", str(args.prompt_len)]
        argv += ["--dtype", dtype, "--omp-bind", vllm_bind(bind)]
        anchor = stack.enter_context(rounds.AnchorRounds(
            argv, name=f"vllm {label}", env={"VLLM_CPU_KVCACHE_SPACE": "1"},
            round_timeout_s=args.vllm_timeout,
        ))  # fmt: skip
        try:
            anchor.start(load_timeout_s=args.vllm_timeout)
        except rounds.AnchorError as exc:
            print(f"vLLM {label} left out: {exc}", flush=True)
            anchor.close()
            continue
        print(f"vLLM {label}: loaded in {anchor.ready.get('load_s', 0):.0f} s, paused", flush=True)
        anchors[label] = anchor
    return anchors


def interleaved_runs(result: dict, loads: dict) -> dict:
    """vLLM's runs as ``vllm_anchor`` reports them, from the rounds timed between latlab's."""
    runs: dict = {}
    for row in result["throughput"]:
        for label, rates in row.get("vllm_rounds", {}).items():
            run = runs.setdefault(label, {"tok_s": {}, "load_s": loads[label].get("load_s"),
                                          "raw": {**loads[label], "rounds": {}}})  # fmt: skip
            run["tok_s"][row["batch"]] = statistics.median(rates)
            run["raw"]["rounds"][row["batch"]] = rates
    return runs


def vllm_anchor(args, model_dir: Path, result: dict) -> dict:
    """vLLM in each dtype and thread binding; the anchor per batch is its fastest run.

    vLLM CPU's default binding (``auto``) computes on one core of two and keeps the other for
    its front end; ``all`` gives it every core, as latlab's engine takes on an idle machine.
    Interleaved (the default), its rounds were timed between latlab's; ``after``, each variant
    runs its own repeats now.
    """
    loads = result.pop("vllm_loads", {})
    if args.vllm_pairing == "interleaved":
        runs = interleaved_runs(result, loads)
    else:
        runs = {}
        for label, dtype, bind in vllm_variants(args):
            got = run_vllm(args, model_dir, dtype, bind)
            if got is not None:
                tok_s = {r["batch"]: r["tok_per_s_median"] for r in got["throughput"]}
                runs[label] = {"tok_s": tok_s, "load_s": got.get("load_s"), "raw": got}
    best: dict[int, tuple[float, str]] = {}
    for label, run in runs.items():
        for batch, tok_s in run["tok_s"].items():
            if tok_s > best.get(batch, (0.0, ""))[0]:
                best[batch] = (tok_s, label)
    if not best:
        doc = DOC_ANCHORS["vllm_cpu"]
        return {"not_from_this_run": True, "best": {b: (v, "bfloat16") for b, v in doc.items()}}
    return {"runs": runs, "best": best, "pairing": args.vllm_pairing}


# ---- the run --------------------------------------------------------------------------------


def load_engines(args, model_dir: Path) -> dict:
    from latlab.engine import LLM

    engines = {}
    variants = [(q, kv) for q in args.quantization.split(",") if q
                for kv in args.kv_cache_dtypes.split(",") if kv]  # fmt: skip
    for q, kv in variants:
        name = ("latlab" if q == "none" else f"latlab-{q}") + ("" if kv == "auto" else f"-kv-{kv}")
        engines[name] = LLM(
            str(model_dir),
            dtype=args.dtype,
            quantization=None if q == "none" else q,
            kv_cache_dtype=kv,
            kv_cache_bytes=1 << 30,
            num_threads=args.threads,
            compile=args.compile,
            max_num_seqs=max(64, *[int(b) for b in args.batches.split(",")]),
        )
        print(f"{name}: {engines[name].engine.summary()}", flush=True)
    return engines


def machine_notes() -> dict:
    import torch

    from latlab.engine.hardware import cpu_capabilities

    return {
        "cpu": cpu_capabilities().as_dict(),
        "torch": torch.__version__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_proc_bind": os.environ.get("OMP_PROC_BIND"),
        "loadavg_at_start": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def measure(args, model_dir: Path) -> dict:
    """The machine, then every system at every batch in interleaved rounds (vLLM's variants
    loaded first and paused between their rounds)."""
    peak_before = fma_peak(usable_threads())  # before any engine's threads exist
    with contextlib.ExitStack() as stack:
        anchors = {}
        if args.vllm_pairing == "interleaved":
            anchors = start_anchors(args, model_dir, stack)
        result = measure_with(args, model_dir, anchors)
        result["vllm_loads"] = {label: a.ready for label, a in anchors.items()}
    result["fma_peak_flop_s"] = peak_at(result["threads"], peak_before)
    return result


def measure_with(args, model_dir: Path, anchors: dict) -> dict:
    import torch

    engines = load_engines(args, model_dir)
    some = next(iter(engines.values())).engine
    hf_model = None
    if not args.no_hf:
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=getattr(torch, args.dtype), attn_implementation="sdpa"
        ).eval()
    result = {
        "machine": machine_notes(),
        "engines": {name: llm.engine.describe() for name, llm in engines.items()},
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "model": str(model_dir),
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "repeats": args.repeats,
        "bandwidth_bytes_s": [bandwidth()],
    }
    result["vocab_size"] = some.model_args.vocab_size
    result["throughput"] = throughput(args, engines, hf_model, result["vocab_size"], anchors)
    result["bandwidth_bytes_s"].append(bandwidth())
    result["roofline"] = roofline(args, engines, result)
    return result


def main(argv: list[str] | None = None) -> None:
    from latlab.procs import sigterm_as_exit

    args = parse_args(argv)
    from latlab.engine.kernels import paged_decode_attention

    paged_decode_attention(wait=True)  # engines use the native kernel only once it is built
    model_dir = ensure_model(args.model_dir)
    with sigterm_as_exit():
        result = measure(args, model_dir)
        if not args.no_prefix:
            vocab = result["vocab_size"]
            result["shared_prefix"] = [
                shared_prefix_ttft(args, model_dir, vocab, caching) for caching in (True, False)
            ]
            on, off = (r["ttft_p50_ms_median"] for r in result["shared_prefix"])
            result["shared_prefix_ttft_ratio"] = on / off
        result["machine"]["loadavg_at_end_of_latlab"] = os.getloadavg()
        result["vllm"] = vllm_anchor(args, model_dir, result)
        result["machine"]["loadavg_at_end"] = os.getloadavg()
    result["goals"] = goals(result)
    print_summary(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


# ---- roofline and goals -------------------------------------------------------------------


def roofline(args, engines: dict, result: dict) -> list[dict]:
    """Per variant and batch: bytes and FLOPs per token vs the rates measured in this run."""
    from latlab.engine.roofline import decode_cost

    whole_run_bw = statistics.median(result["bandwidth_bytes_s"])
    context = args.prompt_len + args.output_len // 2  # mean context over the decode
    # The timed run prefills every prompt too: each output token stands for this many tokens
    # through the linears (FLOPs), while the weights are read once per step (bytes).
    through = (args.prompt_len + args.output_len) / args.output_len
    rows = []
    for row in result["throughput"]:
        bw = statistics.median(row.get("bandwidth_bytes_s") or [whole_run_bw])  # its rounds'
        for name, got in row["engines"].items():
            engine = engines[name].engine
            cost = decode_cost(
                engine.runner.model,
                batch=row["batch"],
                context=context,
                kv_bytes_per_cached_token=engine.kv_bytes_per_token,
            )
            tok_s, gemm = got["tok_s_median"], row["gemm_flop_s"][name]
            rows.append({
                "engine": name, **cost.as_dict(), "tok_s": tok_s,
                "bandwidth_bytes_s": bw, "bandwidth_limit_tok_s": bw / cost.bytes_per_token,
                "gemm_flop_s": gemm, "achieved_flop_s": tok_s * through * cost.flops_per_token,
                "gemm_limit_tok_s": gemm / (through * cost.flops_per_token),
                "prompt_tokens_per_output_token": through - 1,
            })  # fmt: skip
    return rows


def round_ratios(result: dict, name: str, batch: int) -> list[float] | None:
    """``name``'s tok/s over vLLM's fastest variant round by round (interleaved runs only):
    each ratio's two sides ran within the same minute or two."""
    row = next((r for r in result.get("throughput", []) if r["batch"] == batch), {})
    anchor = row.get("vllm_rounds")
    if not anchor:
        return None
    best = [max(each) for each in zip(*anchor.values(), strict=True)]
    return [ours / theirs for ours, theirs in zip(row["engines"][name]["tok_s"], best, strict=True)]


def round_fractions(result: dict, r: dict) -> list[float] | None:
    """Roofline row ``r``'s tok/s round by round against the bandwidth probe that opened the
    same round (its own minute), as fractions of the limit; None without per-round probes."""
    row = next((t for t in result.get("throughput", []) if t["batch"] == r["batch"]), {})
    probes = row.get("bandwidth_bytes_s")
    if not probes:
        return None
    tok_s = row["engines"][r["engine"]]["tok_s"]
    return [t * r["bytes_per_token"] / bw for t, bw in zip(tok_s, probes, strict=True)]


def goals(result: dict) -> dict:
    vllm_best = {int(b): v for b, v in result["vllm"]["best"].items()}
    out = {}
    for r in result["roofline"]:
        key = f"{r['engine']}@{r['batch']}"
        anchor = vllm_best.get(r["batch"])
        out[key] = {
            "x_vllm": r["tok_s"] / anchor[0] if anchor else None,
            "x_vllm_rounds": round_ratios(result, r["engine"], r["batch"]),
            # the ratio this engine would reach running every FLOP at the same-shape GEMM rate
            "x_vllm_at_gemm_rate": r["gemm_limit_tok_s"] / anchor[0] if anchor else None,
            "vllm_dtype": anchor[1] if anchor else None,
            "gemm_fraction": r["achieved_flop_s"] / r["gemm_flop_s"],
            "bandwidth_fraction": r["tok_s"] / r["bandwidth_limit_tok_s"],
            "bandwidth_fraction_rounds": round_fractions(result, r),
        }
    return out


def print_summary(result: dict) -> None:
    m = result["machine"]
    bw = [f"{b / 1e9:.1f}" for b in result["bandwidth_bytes_s"]]
    print(f"\n{m['cpu']['model']}: {m['cpu']['isa']}, bf16 instructions: {m['cpu']['native_bf16']}")
    print(
        f"dtype={result['dtype']} threads={result['threads']} "
        f"load at start={m['loadavg_at_start']} end={m.get('loadavg_at_end')}; "
        f"read bandwidth {', '.join(bw)} GB/s (before, after)"
    )
    for row in result["throughput"]:
        probes = [b / 1e9 for b in row.get("bandwidth_bytes_s", [])]
        if probes:
            print(
                f"batch {row['batch']}: read bandwidth {min(probes):.1f}-{max(probes):.1f} "
                f"GB/s over its {len(probes)} rounds (the roofline takes their median)"
            )
    vllm = result["vllm"]
    label = "NOT from this run (benchmarks.md)" if vllm.get("not_from_this_run") else "this run"
    runs = {d: r["tok_s"] for d, r in vllm.get("runs", {}).items()} or vllm["best"]
    print(f"vLLM CPU tok/s per dtype and binding ({label}); the anchor is the fastest: {runs}")
    head = ("engine", "batch", "tok/s", "x vLLM", "x gen", "GFLOP/tok", "GEMM GF/s", "got GF/s",
            "GEMM %", "MB/tok", "BW lim", "BW %", "out-fwd %")  # fmt: skip
    print(("{:>16} {:>5} {:>8} {:>6} {:>5} {:>9} {:>9} {:>8} {:>6} {:>7} {:>7} {:>5} {:>9}")
          .format(*head))  # fmt: skip
    hf = {row["batch"]: row.get("hf_tok_s_median") for row in result["throughput"]}
    split = {
        (n, row["batch"]): e for row in result["throughput"] for n, e in row["engines"].items()
    }
    for r in result["roofline"]:
        g = result["goals"][f"{r['engine']}@{r['batch']}"]
        gen = hf.get(r["batch"])
        print(
            f"{r['engine']:>16} {r['batch']:>5} {r['tok_s']:>8.1f} {g['x_vllm'] or 0:>6.2f} "
            f"{r['tok_s'] / gen if gen else 0:>5.2f} {r['flops_per_token'] / 1e9:>9.3f} "
            f"{r['gemm_flop_s'] / 1e9:>9.1f} {r['achieved_flop_s'] / 1e9:>8.1f} "
            f"{100 * g['gemm_fraction']:>5.0f}% {r['bytes_per_token'] / 1e6:>7.1f} "
            f"{r['bandwidth_limit_tok_s']:>7.1f} {100 * g['bandwidth_fraction']:>4.0f}% "
            f"{100 * split[(r['engine'], r['batch'])]['outside_forward_fraction']:>8.1f}%"
        )
    print_goals(result)


def _in_step_share(result: dict, name: str, batch: int) -> str:
    """The GEMMs' share of the batch-``batch`` steps by the step's own phase clock: the GEMM rate
    reached against what the same kernels do inside the step (a probe can be slower: W8A8's
    quantizes inside each call)."""
    row = next(r for r in result["throughput"] if r["batch"] == batch)
    share = row["engines"][name].get("gemm_share_of_steps")
    return "" if share is None else f"; its GEMMs are {100 * share:.0f}% of its steps' time"


def _per_round(what: str, ratios: list[float] | None) -> str:
    if not ratios:
        return ""
    return f"; {what} round by round: " + " ".join(f"{x:.2f}" for x in ratios)


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def print_goals(result: dict) -> None:
    g = result["goals"]
    batches = sorted({r["batch"] for r in result["roofline"]})
    top, low = batches[-1], batches[0]
    for name in sorted({r["engine"] for r in result["roofline"]}):
        big, one = g[f"{name}@{top}"], g[f"{name}@{low}"]
        x, gemm, bw = big["x_vllm"] or 0.0, big["gemm_fraction"], one["bandwidth_fraction"]
        print(
            f"{name}: batch {top} {x:.2f}x vLLM ({big['vllm_dtype']}; goal >= {GOAL_VS_VLLM}x: "
            f"{_verdict(x >= GOAL_VS_VLLM)}), {100 * gemm:.0f}% of its GEMM rate (goal >= 75%: "
            f"{_verdict(gemm >= GOAL_GEMM_FRACTION)}); batch {low} at {100 * bw:.0f}% of the "
            f"bandwidth limit (goal >= 90%: {_verdict(bw >= GOAL_BANDWIDTH_FRACTION)}); at 100% "
            f"of its GEMM rate it would be {big['x_vllm_at_gemm_rate'] or 0:.2f}x vLLM"
            + _in_step_share(result, name, top)
            + _per_round("x vLLM", big["x_vllm_rounds"])
            + _per_round(
                f"batch {low}'s share of the bandwidth limit", one.get("bandwidth_fraction_rounds")
            )
        )
    fewer_bytes(result, low)
    peak_lines(result, top)
    if "shared_prefix" in result:
        on, off = result["shared_prefix"]
        print(
            f"shared prefix TTFT p50: caching on {on['ttft_p50_ms_median']:.0f} ms, off "
            f"{off['ttft_p50_ms_median']:.0f} ms, ratio {result['shared_prefix_ttft_ratio']:.3f}"
        )


def peak_lines(result: dict, batch: int) -> None:
    """Each engine's and vLLM's FLOP rate at ``batch`` against the CPU's FMA peak, and what
    the 1.5x goal would need: whether it is within reach of any GEMM on this CPU."""
    peak = result.get("fma_peak_flop_s")
    rows = {r["engine"]: r for r in result["roofline"] if r["batch"] == batch}
    anchor = result["vllm"]["best"].get(batch) or result["vllm"]["best"].get(str(batch))
    if not peak or "latlab" not in rows:
        return
    base = rows["latlab"]
    per_token = base["achieved_flop_s"] / base["tok_s"]  # FLOPs per output token, prompts in
    print(f"float32 FMA peak at {result['threads']} thread(s): {peak / 1e9:.1f} GFLOP/s")
    for name, r in rows.items():
        if "int8" in name:  # integer GEMMs: not bounded by the float32 FMA rate
            continue
        print(f"  {name}: {r['achieved_flop_s'] / 1e9:.1f} GFLOP/s = "
              f"{100 * r['achieved_flop_s'] / peak:.0f}% of peak (its GEMMs alone "
              f"{100 * r['gemm_flop_s'] / peak:.0f}%)")  # fmt: skip
    if anchor:
        vllm = anchor[0] * per_token
        need = GOAL_VS_VLLM * vllm
        print(f"  vLLM ({anchor[1]}): {vllm / 1e9:.1f} GFLOP/s = {100 * vllm / peak:.0f}% of "
              f"peak; {GOAL_VS_VLLM}x vLLM in float32 needs {need / 1e9:.1f} GFLOP/s = "
              f"{100 * need / peak:.0f}% of peak over the whole run")  # fmt: skip


def fewer_bytes(result: dict, batch: int) -> None:
    """Batch 1 with fewer bytes: each quantized variant against the default's bandwidth limit."""
    rows = {r["engine"]: r for r in result["roofline"] if r["batch"] == batch}
    base = rows.get("latlab")
    for name, r in rows.items():
        if base is None or name == "latlab":
            continue
        ratio = r["tok_s"] / base["bandwidth_limit_tok_s"]
        print(
            f"{name}: batch {batch} {r['tok_s']:.1f} tok/s = {ratio:.2f}x the default plan's "
            f"bandwidth limit ({base['bandwidth_limit_tok_s']:.1f} tok/s for "
            f"{base['bytes_per_token'] / 1e6:.0f} MB/token; goal > 1: {_verdict(ratio > 1)})"
        )


if __name__ == "__main__":
    sys.exit(main())
