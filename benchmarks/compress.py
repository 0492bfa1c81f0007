"""Pruned and distilled models against their source: held-out quality and engine speed.

For each model directory given as NAME=DIR (written by ``latlab prune`` / ``latlab distill``)
and the source model (the anchor, measured in the same run):
- quality on the source's ``heldout.txt``: perplexity of each, top-1 agreement and mean KL
  with the source (``latlab.compress.evaluate.compare_models``, the figures the lab gates on);
- speed in the latlab engine, float32, at batch 1 and batch 8: a distinct prompt per request,
  ``--output-len`` greedy tokens with EOS ignored; every model runs once per round, rounds
  interleave the models (A B C A B C ...) so drift on a shared machine hits all alike, and
  each figure is the median over ``--rounds`` with its ratio to the source's median.

    nice -n 10 .venv/bin/python benchmarks/compress.py \\
        --variant pruned-3=/tmp/i17-meas/prune3 --variant distilled-2=/tmp/i17-meas/distill2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=None, help="source model dir [default: bundled]")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def _models(args: argparse.Namespace) -> dict[str, str]:
    from latlab.model_files import resolve_model_path

    models = {"source": resolve_model_path(args.source)}
    for item in args.variant:
        name, _, path = item.partition("=")
        if not path or not Path(path, "config.json").is_file():
            raise SystemExit(f"--variant {item!r}: give NAME=DIR with a model directory")
        models[name] = path
    return models


def quality(models: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Held-out figures of every model against the source (source: itself)."""
    from latlab.compress.evaluate import compare_models, heldout_text_of
    from latlab.model_files import load_causal_lm, load_model_config, load_tokenizer

    source = models["source"]
    text = heldout_text_of(source)
    if text is None:
        raise SystemExit(f"{source} has no heldout.txt to score on")
    tokenizer = load_tokenizer(source)
    reference = load_causal_lm(source, dtype="float32")
    out = {}
    for name, path in models.items():
        candidate = load_causal_lm(path, dtype="float32")
        figures = compare_models(reference, candidate, tokenizer, text)
        config = load_model_config(path)
        params = sum(p.numel() for p in candidate.parameters())
        out[name] = {**figures, "layers": config["num_hidden_layers"], "parameters": params}
    return out


def _prompts(vocab: int, count: int, length: int) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(count)]


def speed(models: dict[str, str], args: argparse.Namespace) -> dict[str, dict[int, Any]]:
    """Median tok/s per model and batch over interleaved rounds."""
    from latlab.engine import LLM, SamplingParams

    engines = {n: LLM(p, dtype="float32", num_threads=args.threads) for n, p in models.items()}
    batches = [int(b) for b in args.batches.split(",")]
    prompts = _prompts(4096, max(batches), args.prompt_len)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    for llm in engines.values():  # warm-up
        llm.generate(prompts[:1], params)
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in engines}
    for _ in range(args.rounds):
        for batch in batches:
            for name, llm in engines.items():
                start = time.perf_counter()
                llm.generate(prompts[:batch], params)
                times[name][batch].append(time.perf_counter() - start)
    out: dict[str, dict[int, Any]] = {}
    for name in engines:
        out[name] = {}
        for batch in batches:
            median = statistics.median(times[name][batch])
            out[name][batch] = {
                "tokens_per_s": batch * args.output_len / median,
                "ms_per_step": 1000 * median / args.output_len,
                "spread_pct": 100 * (max(times[name][batch]) - min(times[name][batch])) / median,
            }
    return out


def report(q: dict[str, Any], s: dict[str, Any], batches: list[int]) -> str:
    head = "| model | layers | parameters | held-out ppl | top-1 vs source | KL |"
    rule = "|---|---|---|---|---|---|"
    for b in batches:
        head += f" batch {b} tok/s (x source) |"
        rule += "---|"
    lines = [head, rule]
    for name, figures in q.items():
        row = (
            f"| {name} | {figures['layers']} | {figures['parameters']:,} | "
            f"{figures['perplexity']:.2f} ({figures['perplexity_change_pct']:+.1f}%) | "
            f"{figures['top1_agreement']:.3f} | {figures['mean_kl']:.3f} |"
        )
        for b in batches:
            mine, anchor = s[name][b]["tokens_per_s"], s["source"][b]["tokens_per_s"]
            row += f" {mine:,.0f} ({mine / anchor:.2f}x, ±{s[name][b]['spread_pct']:.0f}%) |"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    models = _models(args)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()
    q = quality(models)
    s = speed(models, args)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"started {started}; load average before {load_before[0]:.1f}, after "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}, {args.threads} thread(s), "
          f"float32, {args.rounds} interleaved rounds, {args.prompt_len} prompt + "
          f"{args.output_len} output tokens per request")  # fmt: skip
    print(report(q, s, batches))
    if args.json:
        doc = {"started": started, "load_before": load_before, "machine": platform.machine(),
               "args": {k: str(v) for k, v in vars(args).items()},
               "quality": q, "speed": s}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
