"""Cold start of ``latlab serve``: from launching the command to the first streamed token.

What a user waits for after typing ``latlab serve MODEL``: interpreter start, imports, model
load, server bind, then the first request's first token. Each repeat is a fresh process
launched through ``latlab.deploy`` (median of --repeats, default 3): "ready" is the first
healthy ``/health`` (polled every 50 ms), "first token" the first streamed token.
``--phases`` also times the steps inside one process so the figure can be explained (imports
vs tokenizer vs weights vs web stack vs first token).

Anchor: with ``--vllm`` and the anchor venv at /tmp/vllm-venv, ``vllm serve`` is measured in
this run the same way (launch -> first streamed token), and only then is a ratio printed: a
figure from another day or machine (the guide's 53 s for vLLM CPU 0.32) is never divided into
this run's.

    nice -n 10 .venv/bin/python benchmarks/serve_cold_start.py --phases
    nice -n 10 .venv/bin/python benchmarks/serve_cold_start.py --models ref106m --vllm
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
VLLM_SHIM = REPO / "benchmarks" / "anchors" / "vllm_shim.py"
READY_PREFIX = "latlab serve: ready at "
DOC_VLLM_LOAD_S = 53.0
WORK = Path(os.environ.get("LATLAB_BENCH_DIR", "/tmp/latlab-serve-bench"))


def model_dirs(names: list[str]) -> dict[str, Path]:
    """Model name -> directory; the reference model is built once and reused."""
    found: dict[str, Path] = {}
    for name in names:
        if name == "bundled":
            from latlab.assets import bundled_model_path

            path = Path(bundled_model_path())
            if not (path / "model.safetensors").exists():
                print(f"skip bundled: {path} has no model.safetensors yet")
                continue
            found[name] = path
        elif name == "ref106m":
            path = WORK / "ref106m"
            if not (path / "model.safetensors").exists():
                from latlab.testing.random_model import REFERENCE_106M, save_random_llama

                save_random_llama(path, REFERENCE_106M, dtype="bfloat16")
            found[name] = path
        else:
            found[name] = Path(name)
    return found


def launch_once(backend: object, model: Path, engine_args: dict, env: dict) -> dict[str, float]:
    """One fresh launch through latlab.deploy (launch -> healthy -> first streamed token).

    latlab.deploy stops the whole process group afterwards (vLLM's EngineCore and Worker
    included), on success, error and Ctrl-C alike.
    """
    from latlab.deploy import LaunchSettings, launch

    settings = LaunchSettings(model=str(model), engine_args=engine_args, env=env,
                              log_dir=WORK / "logs", health_timeout_s=900)  # fmt: skip
    with launch(backend, settings) as server:  # type: ignore[arg-type]
        cold = server.cold_start
        return {"ready_s": cold.healthy_s, "first_token_s": cold.first_token_s or 0.0}


def latlab_once(model: Path, threads: int | None) -> dict[str, float]:
    from latlab.deploy.latlab_server import LatlabServerBackend

    backend = LatlabServerBackend(str(VENV_BIN / "python"))
    return launch_once(backend, model, {"num_threads": threads} if threads else {}, {})


def vllm_python() -> Path:
    """The vLLM venv's interpreter (benchmarks/vllm_anchor.py says which)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vllm_anchor import anchor_python

    return anchor_python()


def vllm_once(model: Path) -> dict[str, float]:
    from latlab.deploy.vllm import VllmBackend

    backend = VllmBackend([str(vllm_python()), str(VLLM_SHIM)])
    return launch_once(backend, model, {}, {"VLLM_CPU_KVCACHE_SPACE": "1"})


# Timed steps of one cold start inside a single process (printed as one JSON line).
_PHASES = textwrap.dedent(
    """
    import json, sys, time
    t = [time.perf_counter()]
    import latlab.cli.serve; t.append(time.perf_counter())
    import torch; t.append(time.perf_counter())
    from latlab.engine import AsyncLLM, EngineConfig; t.append(time.perf_counter())
    from latlab.model_files import load_tokenizer
    load_tokenizer(sys.argv[1]); t.append(time.perf_counter())
    engine = AsyncLLM(EngineConfig(model=sys.argv[1])); t.append(time.perf_counter())
    from latlab.serve.app import create_app
    from latlab.serve.server import running_server
    app = create_app(engine, "m"); t.append(time.perf_counter())
    import httpx
    with running_server(app) as url:
        t.append(time.perf_counter())
        body = {"prompt": "Hello", "max_tokens": 8, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if '"text":"' in line and '"text":""' not in line:
                    break
        t.append(time.perf_counter())
    names = ["cli import", "torch import", "engine import (after torch)",
             "tokenizer load (alone)", "engine build (tokenizer + weights + KV)",
             "web import + app", "uvicorn start", "first request first token"]
    print(json.dumps({n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])}))
    """
)


def phases(model: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PHASES, str(model)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled,ref106m", help="comma list or paths")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="latlab serve --threads")
    parser.add_argument("--phases", action="store_true", help="also time steps in-process")
    parser.add_argument("--vllm", action="store_true", help="measure vllm serve too")
    parser.add_argument("--vllm-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()

    results: dict[str, dict] = {"loadavg_start": os.getloadavg(), "models": {}}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    for name, path in model_dirs(args.models.split(",")).items():
        runs = [latlab_once(path, args.threads) for _ in range(args.repeats)]
        entry: dict = {"latlab_runs": runs}
        ready, first = _median(runs, "ready_s"), _median(runs, "first_token_s")
        print(f"\n{name} ({path})")
        each = [round(r["first_token_s"], 2) for r in runs]
        print(
            f"  latlab serve: ready {ready:.2f} s, first token {first:.2f} s "
            f"(median of {len(runs)}; runs {each})"
        )
        if args.vllm and vllm_python().exists():
            vruns = [vllm_once(path) for _ in range(args.vllm_repeats)]
            vfirst = _median(vruns, "first_token_s")
            entry["vllm_runs"] = vruns
            print(
                f"  vllm serve (measured in this run): first token {vfirst:.2f} s "
                f"(median of {len(vruns)}); latlab is {vfirst / first:.1f}x faster"
            )
        else:
            print("  no ratio: vLLM was not measured in this run (--vllm measures it)")
        if args.phases:
            entry["phases_s"] = phases(path)
            for step, seconds in entry["phases_s"].items():
                print(f"    {step:<42} {seconds:6.2f} s")
        results["models"][name] = entry
    results["loadavg_end"] = os.getloadavg()
    print(f"\nload average at end {os.getloadavg()[0]:.1f} (other jobs shared the 2 cores)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
