"""Two engine builds (source trees, or step ops vs the one-call step) in alternating processes.

On a shared 2-core VM the same engine's batch-64 rate moves by 10-40% from one minute to the next,
more than most changes: a change is judged by running the two sides in turn, each in a fresh
process, so a slow spell lands on both. Each ``--side`` is ``LABEL=SRC`` (a tree's ``src``
directory put first on ``PYTHONPATH``; ``.`` for the installed one), with ``:step-ops`` appended
to run that side with ``native_decode=False``. Each process prefills 64 distinct prompts (the
prompts of engine_speed.py) and decodes ``--output-len`` tokens ``--runs`` times; it reports the
median tok/s, the median decode step and, where the one-call batch step ran, its barrier and GEMM
milliseconds a step per thread from its phase clock.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/engine_ab.py \\
        --side before=/path/to/old/checkout/src --side after=. --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GEMM_PHASES = ("qkv", "o", "gate_up", "down", "head")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", action="append", default=[], help="LABEL=SRC[:step-ops], twice")
    p.add_argument("--pairs", type=int, default=3, help="rounds of one process per side")
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/latlab-ref106m-bf16"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="the engines' max_num_seqs (default: --batch; above 4 a float32 engine "
        "keeps packed copies beside the native decode steps' weights)",
    )
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--runs", type=int, default=4, help="timed runs in each process")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one measuring process
    args = p.parse_args(argv)
    if args.child is None and len(args.side) != 2:
        p.error("two --side LABEL=SRC[:step-ops] expected")
    return args


def parse_side(spec: str) -> tuple[str, str, bool]:
    """``LABEL=SRC[:step-ops]`` as (label, src, step ops)."""
    label, sep, src = spec.partition("=")
    if not sep or not label or not src:
        raise SystemExit(f"--side {spec!r}: LABEL=SRC[:step-ops] expected")
    step_ops = src.endswith(":step-ops")
    return label, src.removesuffix(":step-ops"), step_ops


def timed_runs(args: argparse.Namespace, step_ops: bool) -> dict:
    """The measuring process: one engine, a warm-up, ``--runs`` timed runs."""
    from engine_speed import distinct_prompts

    from latlab.engine import LLM, SamplingParams

    llm = LLM(str(args.model_dir), dtype=args.dtype, kv_cache_bytes=1 << 30,
              num_threads=args.threads, max_num_seqs=args.max_num_seqs or args.batch,
              native_decode=False if step_ops else None)  # fmt: skip
    engine, prompts = llm.engine, distinct_prompts(args.batch, 6, 4096)

    def run(tokens: int) -> tuple[float, list[float]]:
        params = SamplingParams(max_tokens=tokens, ignore_eos=True)
        for prompt in prompts:
            engine.add_request(prompt, params)
        steps, start = [], time.perf_counter()
        while engine.has_unfinished():
            begin = time.perf_counter()
            engine.step()
            steps.append(time.perf_counter() - begin)
        return time.perf_counter() - start, steps

    run(8)
    decoder = engine.runner.batch_decoder
    if decoder is not None:
        decoder.time_phases(True)
    rates, step_ms = [], []
    for _ in range(args.runs):
        seconds, steps = run(args.output_len)
        rates.append(args.batch * args.output_len / seconds)
        step_ms.append(1e3 * statistics.median(steps[1:]))  # the prefill step left out
    out = {"tok_s": rates, "tok_s_median": statistics.median(rates),
           "decode_step_ms_median": statistics.median(step_ms),
           "decode_batches": engine.describe()["decode_batches"]}  # fmt: skip
    if decoder is not None:
        out.update(phase_ms(dict(decoder.phase_seconds()), args))
    return out


def phase_ms(phases: dict[str, float], args: argparse.Namespace) -> dict[str, float]:
    """Barrier and GEMM milliseconds a decode step per thread (the phase clock sums threads)."""
    per = 1e3 / (args.runs * (args.output_len - 1) * args.threads)
    return {"barrier_ms": phases["barrier"] * per,
            "gemm_ms": sum(phases[p] for p in GEMM_PHASES) * per}  # fmt: skip


def child_process(args: argparse.Namespace, label: str, src: str, step_ops: bool) -> dict:
    """One side measured in a fresh process with ``src`` first on the import path."""
    env = dict(os.environ)
    if src != ".":
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "step-ops" if step_ops
           else "native", "--model-dir", str(args.model_dir), "--dtype", args.dtype,
           "--batch", str(args.batch), "--output-len", str(args.output_len),
           "--runs", str(args.runs), "--threads", str(args.threads),
           "--max-num-seqs", str(args.max_num_seqs or args.batch)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"side {label} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))  # engine_speed.py sits beside this script
    if args.child is not None:
        print(json.dumps(timed_runs(args, args.child == "step-ops")), flush=True)
        return
    sides = [parse_side(spec) for spec in args.side]
    results: dict[str, list[dict]] = {label: [] for label, _, _ in sides}
    for pair in range(args.pairs):
        for label, src, step_ops in sides:
            got = child_process(args, label, src, step_ops)
            results[label].append(got)
            extra = (f", barriers {got['barrier_ms']:.2f} ms, GEMMs {got['gemm_ms']:.1f} ms"
                     if "barrier_ms" in got else "")  # fmt: skip
            print(f"pair {pair + 1} {label}: {got['tok_s_median']:.1f} tok/s "
                  f"({', '.join(f'{r:.0f}' for r in got['tok_s'])}), decode step "
                  f"{got['decode_step_ms_median']:.1f} ms{extra}", flush=True)  # fmt: skip
    first, second = (label for label, _, _ in sides)
    for a, b in zip(results[first], results[second], strict=True):
        print(f"{second} / {first}: {b['tok_s_median'] / a['tok_s_median']:.2f}x")
    if args.json:
        settings = {k: str(v) for k, v in vars(args).items() if k != "child"}
        args.json.write_text(json.dumps({"args": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
