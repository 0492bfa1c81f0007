"""The KV cache in huge pages against 4 KiB pages: decode attention alone, then the engine.

Decode attention reads each sequence's K and V blocks wherever the block manager put them: 2 KiB
blocks (16 tokens x 64 dims x bf16) scattered over a cache of GBs, so with 4 KiB pages nearly
every block is a TLB miss and a page walk. Two measurements, each interleaved round by round:

- **attention alone**: the engine's paged decode attention kernel over ``--layers`` cold layers
  (a 96 MB buffer is read between repeats, as a step's weights evict the cache), batch
  ``--batch``, GQA heads of the ~106M reference model, blocks in random order, at each of
  ``--contexts``; caches from ``torch.zeros`` (4 KiB pages) and from
  ``latlab.engine.huge_pages.zeros_in_huge_pages`` (the engine's allocation);
- **the engine**: decode steps at ``--batch`` after prompts of ``--prompt-lens`` tokens, with
  ``huge_pages`` on and off (that setting moves the weights too; at a short prompt the KV is
  small, so the short row is the weights' share of the difference).

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/kv_huge_pages.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # engine_batch1.py sits beside this script
from attention_caches import BLOCK, HEAD_DIM, HEADS, KV_HEADS, layers_pass, scattered_tables
from engine_batch1 import interleaved, run_benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--contexts", default="26,256,1024", help="attention-alone contexts (tokens)")
    p.add_argument("--cache-blocks", type=int, default=8192, help="blocks per cache (engine's)")
    p.add_argument("--prompt-lens", default="6,512", help="engine prompts (0: skip the engine)")
    p.add_argument("--steps", type=int, default=16, help="engine decode steps timed per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def attention_runs(args, context: int) -> dict[str, Callable[[], float]]:
    """Seconds of one cold pass over ``--layers`` layers, per cache allocation."""
    import torch

    from latlab.engine.huge_pages import zeros_in_huge_pages
    from latlab.engine.kernels import paged_decode_attention

    kernel = paged_decode_attention(wait=True)
    if kernel.fn is None:
        raise SystemExit(f"no native attention kernel: {kernel.reason}")
    attend = kernel.fn
    shape = (args.cache_blocks, KV_HEADS, BLOCK, HEAD_DIM)  # the engine's layout
    tables, lens = scattered_tables(args.batch, context, args.cache_blocks, seed=0)
    q = torch.randn(args.batch, HEADS, HEAD_DIM).bfloat16()
    flush = torch.ones(96 << 20 >> 2)
    caches = {
        "4 KiB pages": [torch.zeros(shape, dtype=torch.bfloat16) for _ in range(2 * args.layers)],
        "huge pages": zeros_in_huge_pages(2 * args.layers, shape, torch.bfloat16),
    }
    for flat in caches.values():
        for cache in flat:
            cache.normal_()

    def run(flat: list) -> float:
        return layers_pass(attend, q, flat, tables, lens, layers=args.layers, flush=flush)

    return {name: (lambda flat=flat: run(flat)) for name, flat in caches.items()}


def engine_runs(args, prompt_len: int) -> dict[str, Callable[[], float]]:
    """Seconds per decode step at ``--batch`` after prompts of ``prompt_len``, per setting."""
    from latlab.engine import EngineConfig, SamplingParams
    from latlab.engine.llm_engine import LLMEngine

    engines = {
        name: LLMEngine(EngineConfig(
            model=str(args.model_dir), dtype="bfloat16", num_threads=args.threads,
            max_num_seqs=args.batch, huge_pages=on,
        ))
        for name, on in (("4 KiB pages", False), ("huge pages", True))
    }  # fmt: skip
    rng = random.Random(1)

    def run(engine) -> float:
        # Early sequences decode while later ones prefill: none may finish before all decode.
        params = SamplingParams(max_tokens=engine.max_model_len - prompt_len, ignore_eos=True)
        ids = [
            engine.add_request([rng.randrange(10, 4000) for _ in range(prompt_len)], params)
            for _ in range(args.batch)
        ]
        while any(not s.is_decoding for s in engine.scheduler.running) or engine.scheduler.waiting:
            engine.step()  # the prompts' prefill
        assert len(engine.scheduler.running) == args.batch, "a sequence finished or was preempted"
        engine.step()
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        took = (time.perf_counter() - start) / args.steps
        for request_id in ids:
            engine.abort(request_id)
        return took

    return {name: (lambda e=e: run(e)) for name, e in engines.items()}


def measure(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads, "batch": args.batch, "attention": [], "engine": []}
    for context in [int(c) for c in args.contexts.split(",") if c]:
        got = interleaved(attention_runs(args, context), args.rounds)
        kv_bytes = 2 * args.layers * args.batch * context * KV_HEADS * HEAD_DIM * 2
        result["attention"].append({"context": context, "kv_bytes": kv_bytes, "seconds": got})
        print(f"attention, context {context}: done", flush=True)
    for prompt_len in [int(n) for n in args.prompt_lens.split(",") if int(n)]:
        got = interleaved(engine_runs(args, prompt_len), args.rounds)
        result["engine"].append({"prompt_len": prompt_len, "step_seconds": got})
        print(f"engine, prompt {prompt_len}: done", flush=True)
    return result


def report(result: dict) -> None:
    med = statistics.median
    print(f"\n{result['threads']} thread(s), batch {result['batch']}; interleaved rounds' medians")
    print(f"{'attention alone':<24} {'4 KiB pages':>14} {'huge pages':>14} {'x':>6}")
    for row in result["attention"]:
        small, huge = med(row["seconds"]["4 KiB pages"]), med(row["seconds"]["huge pages"])
        rate = row["kv_bytes"] / 1e9
        print(f"context {row['context']:<16} {small * 1e3:>6.2f} ms {rate / small:>4.1f}GB/s "
              f"{huge * 1e3:>6.2f} ms {rate / huge:>4.1f}GB/s {small / huge:>5.2f}x")  # fmt: skip
    for row in result["engine"]:
        times = row["step_seconds"]
        small, huge = med(times["4 KiB pages"]), med(times["huge pages"])
        print(f"engine step, prompt {row['prompt_len']:<5} {small * 1e3:>8.2f} ms "
              f"{huge * 1e3:>11.2f} ms {small / huge:>5.2f}x")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args, measure, report, argv)


if __name__ == "__main__":
    main()
