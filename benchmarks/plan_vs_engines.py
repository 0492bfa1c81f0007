"""Check latlab's KV planner against real engines: our engine's blocks and vLLM CPU's tokens.

For each model and a KV byte budget, three figures must agree within one block:
  (a) latlab.plan.plan_memory(model, kv_cache_bytes=budget) -> blocks and tokens,
  (b) latlab's engine, built with EngineConfig(kv_cache_bytes=budget): its block count,
  (c) vLLM CPU with VLLM_CPU_KVCACHE_SPACE=budget GiB: the "KV cache size: N tokens" it logs
      (parsed by benchmarks/anchors/vllm_offline.py --kv-only, run in the anchor venv).

    nice -n 10 .venv/bin/python benchmarks/plan_vs_engines.py --out /tmp/plan_check.json

Models: the bundled tiny-llama and the ~106M reference model (random bf16 weights, written
with latlab.testing.random_model.save_random_llama). Loading vLLM takes about a minute per model
on 2 cores; --no-vllm skips it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from latlab.procs import ProcessSpec, run_to_completion, tail

REPO = Path(__file__).resolve().parents[1]
VLLM_ANCHOR = REPO / "benchmarks" / "anchors" / "vllm_offline.py"
GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny-llama,ref106m", help="comma-separated")
    p.add_argument("--budget-gib", type=int, default=1, help="KV budget (whole GiB, as vLLM)")
    p.add_argument("--block-size", type=int, default=16, help="our engine's block size")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/latlab-plan-check"))
    p.add_argument(
        "--vllm-python",
        default=None,
        help="the vLLM venv's python (default: benchmarks/vllm_anchor.py's choice)",
    )
    p.add_argument("--no-vllm", action="store_true")
    p.add_argument("--no-engine", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return p.parse_args(argv)


def model_dir(name: str, workdir: Path) -> Path:
    """The bundled model's dir, or the reference model written once under ``workdir``."""
    if name == "tiny-llama":
        from latlab.assets import bundled_model_path

        return bundled_model_path()
    if name == "ref106m":
        out = workdir / "ref106m"
        if not (out / "model.safetensors").exists():
            from latlab.testing.random_model import REFERENCE_106M, save_random_llama

            save_random_llama(out, REFERENCE_106M, dtype="bfloat16")
        return out
    return Path(name)


def planner_figures(path: Path, budget: int, block_size: int) -> dict:
    from latlab.plan import plan_memory

    plan = plan_memory(path, kv_cache_bytes=budget, kv_dtype="bf16", block_size=block_size)
    return {
        "block_size": block_size,
        "kv_bytes_per_token": plan.kv_bytes_per_token,
        "blocks": plan.num_blocks,
        "tokens": plan.kv_tokens,
    }


def engine_figures(path: Path, budget: int, block_size: int) -> dict:
    """Build our engine on the budget and read the block count its block manager got."""
    from latlab import LLM

    llm = LLM(model=str(path), dtype="bfloat16", kv_cache_bytes=budget, block_size=block_size)
    stats = llm.engine.stats()
    out = {
        "block_size": block_size,
        "kv_bytes_per_token": llm.engine.kv_bytes_per_token,
        "blocks": stats.num_kv_blocks,
        "tokens": stats.num_kv_blocks * block_size,
    }
    del llm
    return out


def vllm_figures(path: Path, budget_gib: int, explicit: str | None, workdir: Path) -> dict:
    """Run the vLLM CPU anchor in its own venv with --kv-only and read its JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vllm_anchor import anchor_python, missing_note

    python = str(anchor_python(explicit))
    if not Path(python).exists():
        return {"error": missing_note(Path(python))}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out, log = Path(tmp) / "vllm.json", Path(tmp) / "vllm.log"
        cmd = [python, str(VLLM_ANCHOR), str(path), "--kv-only", "--kv-space-gib", str(budget_gib)]
        cmd += ["--out", str(out), "--log", str(log), "--max-model-len", "2048"]
        # Its own process group, stopped whole when it exits, times out or on Ctrl-C: vLLM's
        # EngineCore must not outlive the run.
        spec = ProcessSpec(argv=cmd, name="vllm-offline", log_path=Path(tmp) / "stdout.log",
                           env={"VLLM_CPU_KVCACHE_SPACE": str(budget_gib)})  # fmt: skip
        code = run_to_completion(spec, timeout_s=900)
        if code != 0 or not out.exists():
            text = log if log.exists() else Path(tmp) / "stdout.log"
            return {"error": f"vLLM exited {code}", "log_tail": tail(text, 40)}
        data = json.loads(out.read_text())
    return {
        "block_size": data.get("block_size"),
        "blocks": data.get("kv_cache_blocks"),
        "tokens": data.get("kv_cache_tokens"),
        "vllm_cpu": data.get("machine", {}).get("vllm_cpu"),
        "load_s": data.get("load_s"),
    }


def compare(name: str, args: argparse.Namespace) -> dict:
    path = model_dir(name, args.workdir)
    if not (path / "config.json").exists():
        return {"model": name, "skipped": f"{path}/config.json does not exist yet"}
    budget = args.budget_gib * GIB
    row: dict = {"model": name, "path": str(path), "budget_bytes": budget}
    row["latlab_plan"] = planner_figures(path, budget, args.block_size)
    if not args.no_engine:
        row["latlab_engine"] = engine_figures(path, budget, args.block_size)
        row["engine_block_diff"] = row["latlab_engine"]["blocks"] - row["latlab_plan"]["blocks"]
    if not args.no_vllm:
        vllm = vllm_figures(path, args.budget_gib, args.vllm_python, args.workdir)
        row["vllm"] = vllm
        if vllm.get("tokens") is not None and vllm.get("block_size"):
            at_vllm = planner_figures(path, budget, int(vllm["block_size"]))
            row["latlab_plan_at_vllm_block"] = at_vllm
            diff = (vllm["tokens"] - at_vllm["tokens"]) / vllm["block_size"]
            row["vllm_block_diff"] = diff
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = [compare(name, args) for name in args.models.split(",")]
    for row in rows:
        print_row(row)
    result = {"budget_gib": args.budget_gib, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = all(
        abs(row.get("engine_block_diff", 0)) <= 1 and abs(row.get("vllm_block_diff", 0)) <= 1
        for row in rows
    )
    return 0 if ok else 1


def print_row(row: dict) -> None:
    if "skipped" in row:
        print(f"{row['model']}: skipped ({row['skipped']})", file=sys.stderr)
        return
    plan = row["latlab_plan"]
    line = (
        f"{row['model']}: {plan['kv_bytes_per_token']:,} B/token; plan {plan['blocks']:,} "
        f"blocks of {plan['block_size']} = {plan['tokens']:,} tokens"
    )
    if "latlab_engine" in row:
        line += f"; engine {row['latlab_engine']['blocks']:,} blocks"
    if "latlab_plan_at_vllm_block" in row:
        at, vllm = row["latlab_plan_at_vllm_block"], row["vllm"]
        line += (
            f"; at vLLM's block {vllm['block_size']}: plan {at['tokens']:,} tokens, "
            f"vLLM {vllm['tokens']:,} tokens ({row['vllm_block_diff']:+g} blocks)"
        )
    elif "vllm" in row:
        line += f"; vLLM: {row['vllm'].get('error')}"
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
