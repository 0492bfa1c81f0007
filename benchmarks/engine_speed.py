"""latlab engine throughput vs transformers ``generate`` (and vLLM CPU) on the reference model.

Workloads (the ones of ../shared/guide/benchmarks.md):
- throughput: batch 1 / 8 / 64, a distinct 6-token prompt per request, 128 greedy output
  tokens, EOS ignored, bf16. latlab's ``LLM.generate`` and transformers ``generate`` (static
  batch, sdpa) are interleaved A B A B in one process; each figure is the median of
  ``--repeats`` timed runs after a warm-up, with the per-pair ratio.
- shared prefix: 64 requests arriving together, each a common 512-token prefix plus 16 own
  tokens; TTFT p50 with prefix caching on vs off (a fresh prefix per repeat, so no run is
  helped by the one before).
- vLLM CPU: when /tmp/vllm-venv/bin/python exists (benchmarks/anchors/install.sh), its
  offline anchor script runs on the same model after ours (it loads for about a minute);
  otherwise the figures of benchmarks.md are printed, labelled as not from this run.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python benchmarks/engine_speed.py

OMP_WAIT_POLICY=PASSIVE matters on a shared machine: with the default spinning barriers,
two OMP threads that keep being descheduled ran 4-20x slower (docs/engine.md). It applies to
both engines in the process, so the ratios stay fair.
    ... --batches 1,64 --repeats 3 --no-vllm --json /tmp/engine_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path("/tmp/vllm-venv/bin/python")
VLLM_SCRIPT = REPO / "benchmarks" / "anchors" / "vllm_offline.py"
DOC_ANCHORS = {  # benchmarks.md, "Anchors measured here" (tok/s)
    "vllm_cpu": {1: 97, 8: 562, 64: 1248},
    "transformers_generate": {1: 60, 8: 345, 64: 739},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--prompt-len", type=int, default=6)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="engine with torch.compile")
    p.add_argument("--no-hf", action="store_true", help="skip transformers generate")
    p.add_argument("--no-vllm", action="store_true", help="skip vLLM even if installed")
    p.add_argument("--no-prefix", action="store_true", help="skip the shared-prefix workload")
    p.add_argument("--prefix-len", type=int, default=512)
    p.add_argument("--prefix-requests", type=int, default=64)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


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


def time_engine(llm, prompts, output_len: int) -> float:
    from latlab.engine import SamplingParams

    params = SamplingParams(max_tokens=output_len, ignore_eos=True)
    start, cpu = time.perf_counter(), time.process_time()
    outs = llm.generate(prompts, params)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert all(len(o.token_ids) == output_len for o in outs)
    return len(prompts) * output_len / elapsed, len(prompts) * output_len / cpu


def time_hf(model, prompts, output_len: int) -> float:
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


def throughput(args, llm, hf_model, vocab: int) -> list[dict]:
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = distinct_prompts(batch, args.prompt_len, vocab)
        time_engine(llm, prompts, 8)  # warm-up
        if hf_model is not None:
            time_hf(hf_model, prompts, 8)
        ours, theirs, ours_cpu, theirs_cpu = [], [], [], []
        for _ in range(args.repeats):  # interleaved A B A B
            wall, cpu = time_engine(llm, prompts, args.output_len)
            ours.append(wall)
            ours_cpu.append(cpu)
            if hf_model is not None:
                wall, cpu = time_hf(hf_model, prompts, args.output_len)
                theirs.append(wall)
                theirs_cpu.append(cpu)
        row = {"batch": batch, "latlab_tok_s": ours, "latlab_tok_s_median": statistics.median(ours)}
        # tokens per CPU-second of this process: far less disturbed by other jobs on a shared
        # machine than wall time (with OMP_WAIT_POLICY=PASSIVE idle threads burn no CPU)
        row["latlab_tok_per_cpu_s_median"] = statistics.median(ours_cpu)
        if theirs:
            row["hf_tok_s"] = theirs
            row["hf_tok_s_median"] = statistics.median(theirs)
            row["ratio_per_pair"] = [a / b for a, b in zip(ours, theirs, strict=True)]
            row["ratio_median"] = statistics.median(row["ratio_per_pair"])
            row["hf_tok_per_cpu_s_median"] = statistics.median(theirs_cpu)
            row["cpu_ratio_median"] = statistics.median(
                [a / b for a, b in zip(ours_cpu, theirs_cpu, strict=True)]
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def shared_prefix_ttft(args, model_dir: Path, vocab: int, caching: bool) -> dict:
    import random

    from latlab.engine import EngineConfig, SamplingParams
    from latlab.engine.llm_engine import LLMEngine

    engine = LLMEngine(
        EngineConfig(
            model=str(model_dir),
            dtype="bfloat16",
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
        ids = []
        for i in range(args.prefix_requests):
            tail = [rng.randrange(10, vocab) for _ in range(16)]
            ids.append(engine.add_request(prefix + tail, params, request_id=f"{rep}-{i}"))
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


def run_vllm(args, model_dir: Path) -> dict | None:
    if args.no_vllm or not VLLM_PYTHON.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vllm.json"
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
        cmd = [str(VLLM_PYTHON), str(VLLM_SCRIPT), str(model_dir), "--batches", args.batches]
        cmd += ["--repeats", str(args.repeats), "--output-len", str(args.output_len)]
        cmd += ["--prompt-len", str(args.prompt_len), "--out", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0 or not out.exists():
            print(f"vLLM anchor failed (rc={proc.returncode}): {proc.stderr[-800:]}", flush=True)
            return None
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    model_dir = ensure_model(args.model_dir)
    from latlab.engine import LLM

    start = time.perf_counter()
    llm = LLM(
        str(model_dir),
        dtype="bfloat16",
        kv_cache_bytes=1 << 30,
        num_threads=args.threads,
        compile=args.compile,
        max_num_seqs=max(64, *[int(b) for b in args.batches.split(",")]),
    )
    load_s = time.perf_counter() - start
    vocab = llm.engine.model_args.vocab_size
    hf_model = None
    if not args.no_hf:
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.bfloat16, attn_implementation="sdpa"
        ).eval()
    result = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch": torch.__version__,
            "loadavg_at_start": os.getloadavg(),
        },
        "model": str(model_dir),
        "dtype": "bfloat16",
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "repeats": args.repeats,
        "compile": args.compile,
        "latlab_load_s": load_s,
        "throughput": throughput(args, llm, hf_model, vocab),
    }
    del llm, hf_model
    if not args.no_prefix:
        result["shared_prefix"] = [
            shared_prefix_ttft(args, model_dir, vocab, caching) for caching in (True, False)
        ]
        on, off = (r["ttft_p50_ms_median"] for r in result["shared_prefix"])
        result["shared_prefix_ttft_ratio"] = on / off
        print(json.dumps(result["shared_prefix"]), flush=True)
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    vllm = run_vllm(args, model_dir)
    result["vllm"] = vllm or {"not_from_this_run": True, "tok_s": DOC_ANCHORS["vllm_cpu"]}
    print_summary(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def print_summary(result: dict) -> None:
    vllm = result["vllm"]
    if vllm.get("not_from_this_run"):
        vllm_tok = {int(k): v for k, v in vllm["tok_s"].items()}
        label = "vLLM CPU (benchmarks.md, NOT from this run)"
    else:
        vllm_tok = {r["batch"]: r["tok_per_s_median"] for r in vllm["throughput"]}
        label = "vLLM CPU (this run, after ours)"
    machine = result["machine"]
    print(
        f"\nthreads={machine['torch_threads']} OMP_WAIT_POLICY={machine['omp_wait_policy']} "
        f"load at start={machine['loadavg_at_start']} at end={machine.get('loadavg_at_end')}"
    )
    header = ("batch", "latlab tok/s", "generate", "x gen", "x gen cpu", "vLLM", "x vLLM")
    print("{:>5} {:>13} {:>9} {:>6} {:>9} {:>7} {:>7}".format(*header))
    for row in result["throughput"]:
        b = row["batch"]
        hf = row.get("hf_tok_s_median")
        v = vllm_tok.get(b)
        print(
            f"{b:>5} {row['latlab_tok_s_median']:>13.1f} {hf or 0:>9.1f} "
            f"{row.get('ratio_median', 0):>6.2f} {row.get('cpu_ratio_median', 0):>9.2f} "
            f"{v or 0:>7.1f} "
            f"{(row['latlab_tok_s_median'] / v) if v else 0:>7.2f}"
        )
    print(f"vLLM column: {label}")
    if "shared_prefix" in result:
        on, off = result["shared_prefix"]
        print(
            f"shared prefix TTFT p50: caching on {on['ttft_p50_ms_median']:.0f} ms, off "
            f"{off['ttft_p50_ms_median']:.0f} ms, ratio {result['shared_prefix_ttft_ratio']:.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
