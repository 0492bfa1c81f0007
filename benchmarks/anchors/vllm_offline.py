"""vLLM CPU offline throughput, load time and KV cache size: the anchor for latlab's engine.

Run with the anchor venv (see benchmarks/anchors/install.sh), never the project venv::

    VLLM_CPU_KVCACHE_SPACE=1 nice -n 10 /tmp/vllm-venv/bin/python \
        benchmarks/anchors/vllm_offline.py /tmp/ref106m --batches 1,8,64 --repeats 3

It prints one JSON object on stdout (``--out FILE`` also writes it): load time, output tokens/s
per batch size (median of ``--repeats`` timed runs after one warm-up each; every request has a
distinct ``--prompt-len``-token prompt and decodes ``--output-len`` greedy tokens, EOS ignored),
and the KV cache size vLLM reports for the given ``VLLM_CPU_KVCACHE_SPACE``. ``--kv-only`` stops
after loading, for the planner's check of KV tokens per byte budget.

vLLM starts its engine core in a spawned process, hence the ``__main__`` guard; its log (ours
to parse for the KV figures) goes to a temporary file through the process's stdout/stderr fds,
which the spawned workers inherit. ``--log FILE`` keeps that log.

``--rounds-fds R,W`` (benchmarks/anchor_rounds.py drives it) loads once, warms up every batch,
writes one JSON line ``{"ready": true, ...load figures}`` to fd W, then times one ``generate``
per batch size it reads from fd R (a line each), answering a JSON line each, until ``quit`` or
end of input: the caller interleaves these rounds with its own system's, and pauses this
process group in between.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vllm_shim

KV_TOKENS_RE = re.compile(r"KV cache size: ([\d,]+) tokens")
MAX_CONC_RE = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
BLOCKS_RE = re.compile(r"num_(?:gpu|cpu)_blocks(?: is)?[=: ]+(\d+)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="vLLM CPU offline anchor (throughput, load, KV size)")
    p.add_argument("model", help="model directory (HF safetensors + config + tokenizer)")
    p.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes")
    p.add_argument("--prompt-len", type=int, default=6)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--kv-space-gib",
        type=float,
        default=None,
        help="sets VLLM_CPU_KVCACHE_SPACE (GiB); default: the env var, else 1",
    )
    p.add_argument(
        "--omp-bind",
        default=None,
        help="sets VLLM_CPU_OMP_THREADS_BIND (default 'auto': on 2 cores vLLM computes "
        "on core 0 and reserves core 1 for its front end); e.g. 0-1 to use both",
    )
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--kv-only", action="store_true", help="load, report KV size, no throughput")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--log", type=Path, default=None, help="keep vLLM's log in this file")
    p.add_argument(
        "--rounds-fds",
        default=None,
        help="R,W: after loading, time one generate per batch size read from fd R, answer on W",
    )
    return p.parse_args(argv)


@contextmanager
def captured_fds(path: Path):
    """Send fd 1 and 2 (ours and the spawned workers') to ``path``; yield the saved fds."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    try:
        yield saved
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def distinct_prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    """Token-id prompts, distinct per request so no engine can share a cached prefix."""
    lo = 10  # stay clear of special tokens at the start of small vocabularies
    span = max(vocab - lo, 1)
    return [[lo + (i * 7919 + j * 104729 + 17) % span for j in range(length)] for i in range(n)]


def parse_kv_log(log_text: str, block_size: int, blocks: int | None = None) -> dict:
    """KV cache figures from vLLM's log ("CPU KV cache size: 58,240 tokens, Maximum ...").

    ``blocks`` is the engine's own count when the front end knows it; otherwise it is read from
    the log or derived from the token count (vLLM logs whole blocks x block_size).
    """
    out: dict = {"block_size": block_size}
    m = KV_TOKENS_RE.findall(log_text)
    if m:
        out["kv_cache_tokens"] = int(m[-1].replace(",", ""))
    m2 = MAX_CONC_RE.findall(log_text)
    if m2:
        out["max_concurrency"] = {
            "tokens_per_request": int(m2[-1][0].replace(",", "")),
            "x": float(m2[-1][1]),
        }
    if not blocks:
        m3 = BLOCKS_RE.findall(log_text)
        blocks = int(m3[-1]) if m3 else None
    if not blocks and "kv_cache_tokens" in out:
        blocks = out["kv_cache_tokens"] // block_size
    out["kv_cache_blocks"] = blocks
    return out


def kv_figures(log_text: str, llm) -> dict:  # type: ignore[no-untyped-def]
    cache = llm.llm_engine.vllm_config.cache_config
    blocks = getattr(cache, "num_gpu_blocks", None) or getattr(cache, "num_cpu_blocks", None)
    return parse_kv_log(log_text, cache.block_size, blocks)


def token_inputs(prompts: list[list[int]]) -> list:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=p) for p in prompts]


def timed_generate(llm, params, inputs) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Output tokens and wall seconds of one ``generate`` over ``inputs``."""
    t0 = time.perf_counter()
    outs = llm.generate(inputs, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    return sum(len(o.outputs[0].token_ids) for o in outs), dt


def time_batch(llm, params, prompts, repeats: int) -> dict:  # type: ignore[no-untyped-def]
    inputs = token_inputs(prompts)
    llm.generate(inputs, params, use_tqdm=False)  # warm-up at this batch shape
    rates, produced = [], 0
    for _ in range(repeats):
        produced, dt = timed_generate(llm, params, inputs)
        rates.append(produced / dt)
    return {
        "batch": len(prompts),
        "output_tokens": produced,
        "tok_per_s": rates,
        "tok_per_s_median": statistics.median(rates),
    }


def serve_rounds(llm, params, inputs: dict[int, list], fds: str, ready: dict) -> None:  # type: ignore[no-untyped-def]
    """Warm up every batch, say ``ready`` on fd W, then time one generate per batch size read
    from fd R (a JSON line back for each) until ``quit`` or end of input."""
    r_fd, w_fd = (int(f) for f in fds.split(","))
    for fd in (r_fd, w_fd):  # vLLM's spawned engine core must not hold our pipe ends
        os.set_inheritable(fd, False)
    for batch_inputs in inputs.values():
        llm.generate(batch_inputs, params, use_tqdm=False)  # warm-up at this batch shape
    with open(r_fd, encoding="utf-8") as requests, open(w_fd, "w", encoding="utf-8") as out:
        out.write(json.dumps({"ready": True, **ready}) + "\n")
        out.flush()
        for line in requests:
            if line.strip() in ("", "quit"):
                break
            batch = int(line)
            produced, dt = timed_generate(llm, params, inputs[batch])
            out.write(json.dumps({"batch": batch, "output_tokens": produced,
                                  "tok_per_s": produced / dt}) + "\n")  # fmt: skip
            out.flush()


def machine_notes() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.metadata as md

    def ver(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "vllm_cpu": ver("vllm-cpu"),
        "torch": ver("torch"),
        "transformers": ver("transformers"),
        "loadavg_at_start": list(os.getloadavg()),
        "note": "2 cores shared with other engineers' jobs while measuring; prefer ratios",
    }


def run(args: argparse.Namespace) -> dict:
    kv_gib = args.kv_space_gib
    if kv_gib is None:
        kv_gib = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_gib:g}"
    if args.omp_bind:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.omp_bind
    result: dict = {
        "anchor": "vllm-cpu offline",
        "model": str(Path(args.model).resolve()),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_notes(),
        "kv_cache_space_gib": kv_gib,
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "repeats": args.repeats,
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
    }
    log_path = args.log or Path(tempfile.mkstemp(prefix="vllm-offline-", suffix=".log")[1])
    with captured_fds(log_path):
        t0 = time.perf_counter()
        from vllm import LLM, SamplingParams

        t_import = time.perf_counter()
        batches = [int(b) for b in args.batches.split(",") if b]
        llm = LLM(
            model=args.model,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            max_num_seqs=max([*batches, 64]),
            seed=0,
        )
        t_loaded = time.perf_counter()
        result["import_s"] = t_import - t0
        result["load_s"] = t_loaded - t_import
        result["load_s_including_import"] = t_loaded - t0
        result.update(kv_figures(log_path.read_text(errors="replace"), llm))
        if not args.kv_only:
            vocab = llm.llm_engine.model_config.get_vocab_size()
            params = SamplingParams(
                temperature=0.0, max_tokens=args.output_len, ignore_eos=True, seed=0
            )
            prompts = {b: distinct_prompts(b, args.prompt_len, vocab) for b in batches}
            if args.rounds_fds:
                inputs = {b: token_inputs(p) for b, p in prompts.items()}
                serve_rounds(llm, params, inputs, args.rounds_fds, result)
            else:
                result["throughput"] = [
                    time_batch(llm, params, p, args.repeats) for p in prompts.values()
                ]
    result["log"] = str(log_path)
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text, flush=True)
    # vLLM's engine-core process can keep the interpreter alive; leave promptly.
    os._exit(0)


if __name__ == "__main__":
    vllm_shim.patch_metadata()
    main()
