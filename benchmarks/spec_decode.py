"""Prompt-lookup speculative decoding in the latlab engine vs plain decoding, in the same run.

For each batch size, the same greedy requests run with ``num_speculative_tokens`` 0 (the
anchor: the engine without speculation) and each of --draft-tokens, interleaved, --repeats
times; figures are medians. Printed per row: output tok/s, ratio to the anchor, draft
acceptance (accepted / proposed), tokens each sequence gained per engine step, and how far the
outputs agree with the anchor's (fp32: identical; bf16: equal up to rounding, which also moves
when only the batch size changes). At batch 1 the same technique in transformers
(``generate(prompt_lookup_num_tokens=k)`` vs plain ``generate``) is measured as an outside
anchor.

Two workloads, because the gain is set by the acceptance rate:
- ``natural``: prompts cut from the bundled model's held-out text (the model rarely repeats
  them: the overhead case);
- ``repeat``: the same text with one line repeated four times, the pattern of code edits and
  extraction where the output quotes its context.

And the cost side: the forward time of one step with 1 + k tokens per sequence over 1 token,
which sets the acceptance needed to break even.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/spec_decode.py --model bundled
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/spec_decode.py  # ~106M reference, bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from latlab.assets import bundled_model_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default="/tmp/latlab-ref106m-bf16",
        help="model dir, or 'bundled' (built as the ~106M reference if the dir is missing)",
    )
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--draft-tokens", default="4,8")
    p.add_argument("--prompt-len", type=int, default=96)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto", help="engine and transformers dtype")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="> 0: sampled requests (speculative sampling); the transformers anchor is skipped",
    )
    p.add_argument("--no-hf", action="store_true", help="skip the transformers anchor")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def model_dir(name: str) -> Path:
    if name == "bundled":
        return Path(bundled_model_path())
    from engine_speed import ensure_model  # this folder's script: builds the reference model

    return ensure_model(Path(name))


def workloads(tokenizer, count: int, length: int) -> dict[str, list[list[int]]]:
    """Prompts of ``length`` tokens from the held-out text, plain and with a repeated line."""
    text = (Path(bundled_model_path()) / "heldout.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if len(line.split()) >= 6]
    ids = tokenizer.encode(text, add_special_tokens=False)
    starts = [(i * 997) % (len(ids) - length) for i in range(count)]
    natural = [ids[s : s + length] for s in starts]
    repeat = []
    for i, s in enumerate(starts):
        line = tokenizer.encode(lines[(i * 37) % len(lines)] + "\n", add_special_tokens=False)
        head = ids[s : s + max(length - 4 * len(line), 8)]
        repeat.append((head + line * 4)[-length:])
    return {"natural": natural, "repeat": repeat}


def run_engine(
    llm, prompts: list[list[int]], output_len: int, temperature: float = 0.0
) -> tuple[float, list, dict]:
    from latlab.engine import SamplingParams

    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=temperature)
    before = llm.engine.stats()
    steps = 0
    ids = [llm.engine.add_request(p, params) for p in prompts]
    outputs: dict[str, list[int]] = {}
    start = time.perf_counter()
    while llm.engine.has_unfinished():
        for out in llm.engine.step():
            if out.finished:
                outputs[out.request_id] = out.token_ids
        steps += 1
    elapsed = time.perf_counter() - start
    after = llm.engine.stats()
    counts = {
        "steps": steps,
        "drafted": after.spec_draft_tokens_total - before.spec_draft_tokens_total,
        "accepted": after.spec_accepted_tokens_total - before.spec_accepted_tokens_total,
    }
    return len(prompts) * output_len / elapsed, [outputs[i] for i in ids], counts


def agreement(got: list[list[int]], ref: list[list[int]]) -> float:
    """Share of output tokens equal to the anchor's up to each sequence's first difference."""
    same = 0
    for a, b in zip(got, ref, strict=True):
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            same += 1
    return same / max(sum(len(r) for r in ref), 1)


def engine_rows(args, path: Path, prompts_by_name: dict) -> list[dict]:
    from latlab.engine import LLM

    drafts = [int(k) for k in args.draft_tokens.split(",")]
    engines = {k: LLM(str(path), num_speculative_tokens=k, dtype=args.dtype) for k in [0, *drafts]}
    rows = []
    for name, all_prompts in prompts_by_name.items():
        for batch in [int(b) for b in args.batches.split(",")]:
            prompts = all_prompts[:batch]
            for llm in engines.values():
                run_engine(llm, prompts, 8)  # warm-up
            speeds: dict[int, list[float]] = {k: [] for k in engines}
            outs, counts = {}, {}
            for _ in range(args.repeats):  # interleaved: anchor, k1, k2, anchor, ...
                for k, llm in engines.items():
                    tok_s, outs[k], counts[k] = run_engine(
                        llm, prompts, args.output_len, args.temperature
                    )
                    speeds[k].append(tok_s)
            anchor = statistics.median(speeds[0])
            for k in engines:
                c = counts[k]
                row = {
                    "workload": name,
                    "batch": batch,
                    "draft_tokens": k,
                    "tok_s": speeds[k],
                    "tok_s_median": statistics.median(speeds[k]),
                    "ratio_vs_no_spec": statistics.median(speeds[k]) / anchor,
                    "acceptance": c["accepted"] / c["drafted"] if c["drafted"] else None,
                    "tokens_per_seq_step": args.output_len / c["steps"],
                    "agreement_with_no_spec": agreement(outs[k], outs[0]),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def hf_rows(args, path: Path, prompts_by_name: dict) -> list[dict]:
    """transformers generate at batch 1: plain vs prompt_lookup_num_tokens=k."""
    from latlab.model_files import load_causal_lm

    model = load_causal_lm(str(path), dtype=args.dtype)
    drafts = [int(k) for k in args.draft_tokens.split(",")]
    rows = []

    def generate(prompt: list[int], k: int, n: int) -> tuple[float, list[int]]:
        ids = torch.tensor([prompt])
        extra = {"prompt_lookup_num_tokens": k} if k else {}
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                **extra,
            )
        return time.perf_counter() - start, out[0, len(prompt) :].tolist()

    for name, prompts in prompts_by_name.items():
        prompt = prompts[0]
        for k in [0, *drafts]:
            generate(prompt, k, 8)
        speeds: dict[int, list[float]] = {k: [] for k in [0, *drafts]}
        outs = {}
        for _ in range(args.repeats):
            for k in speeds:
                elapsed, outs[k] = generate(prompt, k, args.output_len)
                speeds[k].append(args.output_len / elapsed)
        for k in speeds:
            row = {
                "workload": name,
                "batch": 1,
                "hf_prompt_lookup_tokens": k,
                "hf_tok_s_median": statistics.median(speeds[k]),
                "hf_ratio_vs_plain": statistics.median(speeds[k]) / statistics.median(speeds[0]),
                "agreement_with_plain": agreement([outs[k]], [outs[0]]),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def step_cost(path: Path, draft_tokens: list[int], batches: list[int], dtype: str) -> list[dict]:
    """Forward time with 1 + k new tokens per sequence over 1 token (64 tokens cached)."""
    from latlab.engine import LLM, SamplingParams
    from latlab.engine.scheduler import SchedulerOutput

    llm = LLM(str(path), dtype=dtype)
    engine = llm.engine
    rows = []
    for batch in batches:
        for rid in range(batch):
            engine.add_request(list(range(10, 74)), SamplingParams(max_tokens=64), f"c{rid}")
        engine.step()  # prefill all; every sequence now decodes
        seqs = list(engine.scheduler.running)
        base_ms = None
        for k in [0, *draft_tokens]:
            for seq in seqs:
                engine.block_manager.allocate_slots(seq, 1 + k)
            times = []
            for _ in range(7):
                for seq in seqs:
                    seq.draft_token_ids = [11] * k
                sched = SchedulerOutput(seqs=seqs, num_new_tokens=[1 + k] * len(seqs))
                start = time.perf_counter()
                engine.runner.execute(sched)
                times.append((time.perf_counter() - start) * 1e3)
            for seq in seqs:
                seq.draft_token_ids = []
            ms = statistics.median(times)
            base_ms = base_ms or ms
            row = {"batch": batch, "tokens_per_seq": 1 + k, "step_ms": ms, "ratio": ms / base_ms}
            rows.append(row)
            print(json.dumps(row), flush=True)
        for rid in range(batch):
            engine.abort(f"c{rid}")
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    path = model_dir(args.model)
    from latlab.model_files import load_tokenizer

    batches = [int(b) for b in args.batches.split(",")]
    prompts = workloads(load_tokenizer(str(path)), max(batches), args.prompt_len)
    result = {
        "model": str(path),
        "threads": torch.get_num_threads(),
        "output_len": args.output_len,
        "prompt_len": args.prompt_len,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "step_cost": step_cost(
            path, [int(k) for k in args.draft_tokens.split(",")], batches, args.dtype
        ),
        "engine": engine_rows(args, path, prompts),
    }
    result["temperature"] = args.temperature
    if not args.no_hf and args.temperature == 0.0:
        result["transformers"] = hf_rows(args, path, prompts)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
