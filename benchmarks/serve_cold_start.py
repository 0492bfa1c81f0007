"""Cold start of ``latlab serve``: from launching the command to the first streamed token.

What a user waits for after typing ``latlab serve MODEL``: interpreter start, imports, model
load, server bind, then the first request's first token. Each repeat is a fresh process
(median of --repeats, default 3). ``--phases`` also times the steps inside one process so the
figure can be explained (imports vs tokenizer vs weights vs web stack vs first token).

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
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
VLLM_PYTHON = Path("/tmp/vllm-venv/bin/python")
VLLM_SHIM = REPO / "benchmarks" / "anchors" / "vllm_shim.py"
READY_PREFIX = "latlab serve: ready at "
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


def first_token_s(base_url: str, model: str, deadline: float) -> float:
    """Stream one completion; perf_counter when the first content chunk arrived."""
    body = {"model": model, "prompt": "Hello", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            choices = json.loads(line[6:])["choices"] if line.startswith("data: {") else []
            if choices and choices[0].get("text"):
                return time.perf_counter()
            if time.perf_counter() > deadline:
                break
    raise RuntimeError("no content chunk arrived")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def latlab_once(model: Path, threads: int | None) -> dict[str, float]:
    cmd = [str(VENV_BIN / "latlab"), "serve", str(model), "--port", "0"]
    if threads:
        cmd += ["--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = None
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith(READY_PREFIX):
                url = line[len(READY_PREFIX) :].split()[0].removesuffix("/v1")
                break
        if url is None:
            raise RuntimeError(f"latlab serve exited with {proc.wait()} before the ready line")
        ready = time.perf_counter()
        first = first_token_s(url, str(model), start + 300)
        return {"ready_s": ready - start, "first_token_s": first - start}
    finally:
        stop(proc)


def vllm_once(model: Path) -> dict[str, float]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [str(VLLM_PYTHON), str(VLLM_SHIM), "serve", str(model), "--port", str(port)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - start > 600:
                raise RuntimeError("vllm serve did not come up in 600 s")
            time.sleep(0.1)
        ready = time.perf_counter()
        first = first_token_s(url, str(model), start + 900)
        return {"ready_s": ready - start, "first_token_s": first - start}
    finally:
        stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        if args.vllm and VLLM_PYTHON.exists():
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
