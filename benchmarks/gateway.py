"""latlab gateway, measured with latlab's own client: added latency, cache effect, routing.

Three studies, each against an anchor measured in the same run (figures in docs/gateway.md):

    overhead  `latlab bench` direct to the deterministic stub server vs through `latlab gateway`
              (cache off), and through LiteLLM's proxy / SGLang's router when their venvs exist
              (/tmp/litellm-venv, /tmp/sglang-router-venv) and nginx as a plain streaming
              reverse proxy (the floor of one HTTP hop) and a layer-4 byte relay in one Python
              process (benchmarks/anchors/pyrelay.py: the floor of Python in the path) and an
              HTTP proxy in one Python process that parses each request and splices the answer
              (benchmarks/anchors/pyproxy.py, `pyproxy`; `pyproxy-checked` also validates
              bodies as latlab serve does: the floor of a Python gateway), at 1 / 64 / 256
              streams, A/B
              interleaved, medians of --repeats; the stub's own first-chunk p50 is the truth;
              each proxy's own CPU per forwarded chunk. --baseline-src DIR adds the gateway of
              another checkout (its src/) to the same run: before/after, interleaved;
              `--others latlab-gateway-asgi` the gateway without its direct lane;
              --proxy-cpus 1 gives every proxy CPU 1 and the stub and bench the others.
    waves     the same targets hit by bursts of N simultaneous streams from latlab's raw HTTP
              client in this process (no bench process per run, order rotated each repeat):
              TTFT p50 added and CPU per chunk, quicker and less noisy than `overhead`.
    cache     `latlab serve` (bundled model) behind the gateway: TTFT of a hit vs a miss, and the
              hit rate of a workload where 25% of requests repeat an earlier one.
    parser    the gateway's own CPU time per forwarded chunk and its added TTFT with uvicorn's
              h11 parser vs httptools (LATLAB_HTTP_PARSER), one gateway each, interleaved.
    routing   two `latlab serve` replicas (one thread each) behind the gateway: 8 shared-prefix
              groups, then one hot prefix with 80% of the traffic; prefix vs round-robin vs
              least-load: TTFT p50/p99, the replicas' own prefix-cache hit rate (their /metrics)
              and how the requests were split.

    nice -n 10 .venv/bin/python benchmarks/gateway.py overhead --repeats 3 \\
        --out benchmarks/results/gateway_overhead.json
    nice -n 10 .venv/bin/python benchmarks/gateway.py cache \\
        --out benchmarks/results/gateway_cache.json
    nice -n 10 .venv/bin/python benchmarks/gateway.py routing \\
        --out benchmarks/results/gateway_routing.json
    nice -n 10 .venv/bin/python benchmarks/gateway.py parser --levels 64 --requests 256 \\
        --out benchmarks/results/gateway_parser.json

Every process is started through latlab.procs and stopped (whole process group) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latlab.procs import ManagedProcess, ProcessSpec, free_port, group_members, sigterm_as_exit

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
TOKENIZER = REPO / "src" / "latlab" / "assets" / "tiny-llama"
LITELLM = Path("/tmp/litellm-venv/bin/litellm")
SGLANG_PY = Path("/tmp/sglang-router-venv/bin/python")
NGINX = Path("/usr/sbin/nginx")
PYRELAY = REPO / "benchmarks" / "anchors" / "pyrelay.py"
PYPROXY = REPO / "benchmarks" / "anchors" / "pyproxy.py"
REQUESTS = {1: 30, 64: 256, 256: 768}
WORDS = ("alpha", "river", "stone", "cloud", "metal", "green", "quiet", "table", "north",
         "light", "paper", "ocean", "swift", "amber", "field", "glass", "tiger", "maple",
         "storm", "pixel", "orbit", "cedar", "delta", "ember")  # fmt: skip


# ---- processes ---------------------------------------------------------------------------


@contextmanager
def process(
    argv: list[str], name: str, health: str, env: dict | None = None
) -> Iterator[ManagedProcess]:
    """Start ``argv``, wait for ``health`` to answer 200, yield it; stop the group after."""
    proc = ManagedProcess(ProcessSpec(argv=argv, name=name, env=env or {})).start()
    try:
        proc.wait_http(health, timeout_s=180)
        yield proc
    finally:
        proc.stop()


def stub(stack: ExitStack, chunks: int = 64) -> str:
    port = free_port()
    argv = [str(BIN / "python"), "-m", "latlab.testing.stub_server", "--port", str(port),
            "--ttft-ms", "50", "--itl-ms", "10", "--chunks", str(chunks)]  # fmt: skip
    stack.enter_context(process(argv, "stub", f"http://127.0.0.1:{port}/health"))
    return f"http://127.0.0.1:{port}"


def gateway(stack: ExitStack, upstreams: list[str], *flags: str, env: dict | None = None) -> str:
    return gateway_process(stack, upstreams, *flags, env=env)[0]


def gateway_process(
    stack: ExitStack, upstreams: list[str], *flags: str, env: dict | None = None
) -> tuple[str, int]:
    """A `latlab gateway` in front of ``upstreams``: (its URL, its process id)."""
    port = free_port()
    argv = [str(BIN / "latlab"), "gateway", "--port", str(port)]
    for up in upstreams:
        argv += ["--upstream", up]
    health = f"http://127.0.0.1:{port}/health"
    proc = stack.enter_context(process(argv + list(flags), "gateway", health, env))
    return f"http://127.0.0.1:{port}", proc.pid


def serve(stack: ExitStack, *flags: str) -> str:
    port = free_port()
    argv = [str(BIN / "latlab"), "serve", "--port", str(port), "--threads", "1", *flags]
    env = {"OMP_NUM_THREADS": "1"}
    stack.enter_context(process(argv, "serve", f"http://127.0.0.1:{port}/health", env))
    return f"http://127.0.0.1:{port}"


def litellm(stack: ExitStack, upstream: str, work: Path) -> tuple[str, int] | None:
    if not LITELLM.exists():
        return None
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: stub-model\n    litellm_params:\n"
        f"      model: openai/stub-model\n      api_base: {upstream}/v1\n      api_key: none\n"
    )
    argv = [str(LITELLM), "--config", str(config), "--port", str(port), "--host", "127.0.0.1",
            "--num_workers", "1"]  # fmt: skip
    env = {"LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true", "LITELLM_LOG": "ERROR"}
    health = f"http://127.0.0.1:{port}/health/liveliness"
    proc = stack.enter_context(process(argv, "litellm", health, env))
    return f"http://127.0.0.1:{port}", proc.pid


def sglang_router(stack: ExitStack, upstream: str) -> tuple[str, int] | None:
    if not SGLANG_PY.exists():
        return None
    port = free_port()
    argv = [str(SGLANG_PY), "-m", "sglang_router.launch_router", "--worker-urls", upstream,
            "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin"]  # fmt: skip
    proc = stack.enter_context(process(argv, "sglang-router", f"http://127.0.0.1:{port}/health"))
    return f"http://127.0.0.1:{port}", proc.pid


def pyrelay(stack: ExitStack, upstream: str) -> tuple[str, int]:
    """The layer-4 Python relay (benchmarks/anchors/pyrelay.py) in front of ``upstream``: what
    one event loop costs per chunk when it only moves bytes."""
    port = free_port()
    argv = [str(BIN / "python"), str(PYRELAY), "--upstream", upstream.split("//", 1)[1],
            "--port", str(port)]  # fmt: skip
    proc = stack.enter_context(process(argv, "pyrelay", f"http://127.0.0.1:{port}/health"))
    return f"http://127.0.0.1:{port}", proc.pid


def pyproxy(
    stack: ExitStack, upstream: str, *, checked: bool = False, burn: tuple[float, float] = (0, 0)
) -> tuple[str, int]:
    """The HTTP-reading Python proxy (benchmarks/anchors/pyproxy.py) in front of ``upstream``:
    requests parsed (and with ``checked``, validated as latlab serve does), answers spliced;
    ``burn``: extra spinning per request and per upstream read, in microseconds."""
    port = free_port()
    argv = [str(BIN / "python"), str(PYPROXY), "--upstream", upstream.split("//", 1)[1],
            "--port", str(port), "--request-cpu-us", str(burn[0]), "--chunk-cpu-us",
            str(burn[1])] + (["--checked"] if checked else [])  # fmt: skip
    proc = stack.enter_context(process(argv, "pyproxy", f"http://127.0.0.1:{port}/health"))
    return f"http://127.0.0.1:{port}", proc.pid


NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    upstream stub {{ server {upstream}; keepalive 512; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def nginx(stack: ExitStack, upstream: str, work: Path) -> tuple[str, int] | None:
    """nginx as a plain streaming reverse proxy (one process, unbuffered, keep-alive upstream
    connections): no cache, keys or routing, so its added latency is what one HTTP hop in a C
    proxy costs on this machine, the floor any gateway sits on. ``master_process off`` keeps it
    one process, whose CPU time is then the proxy's."""
    if not NGINX.exists():
        return None
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, upstream=upstream.split("//", 1)[1]))
    argv = [str(NGINX), "-c", str(conf), "-p", str(work), "-e", str(work / "nginx-error.log")]
    proc = stack.enter_context(process(argv, "nginx", f"http://127.0.0.1:{port}/health"))
    return f"http://127.0.0.1:{port}", proc.pid


# ---- measuring ---------------------------------------------------------------------------


def bench(url: str, out: Path, *, concurrency: int, requests: int, extra: list[str]) -> dict:
    """One `latlab bench --url` level; its JSON level dict."""
    argv = [str(BIN / "latlab"), "bench", "--url", url + "/v1", "--concurrency",
            str(concurrency), "--num-requests", str(requests), "--json", str(out),
            "--no-progress", "--no-salt", *extra]  # fmt: skip
    import subprocess

    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"latlab bench failed: {done.stderr.strip()[-400:]}")
    data = json.loads(out.read_text())
    return {**data["levels"][0], "warmup_requests": data.get("warmup_requests", 0)}


def get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        return resp.read().decode()


def post(url: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(urllib.request.Request(url, data=b"", method="POST"), timeout=10).read()


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` whose labels contain ``labels`` (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def machine() -> dict[str, Any]:
    return {"load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip


# ---- overhead ----------------------------------------------------------------------------


def overhead_targets(
    args: argparse.Namespace, stack: ExitStack, upstream: str, work: Path
) -> dict[str, tuple[str, int | None]]:
    """name -> (URL, process id whose CPU is counted): direct, latlab gateway, the others."""
    targets: dict[str, tuple[str, int | None]] = {
        "direct": (upstream, None),
        "latlab-gateway": gateway_process(stack, [upstream], "--cache", "off"),
    }
    if args.gateway_workers > 1:  # latlab gateway --workers N beside the single process
        targets[f"latlab-gateway-w{args.gateway_workers}"] = gateway_process(
            stack, [upstream], "--cache", "off", "--workers", str(args.gateway_workers)
        )
    if args.baseline_src:  # the same gateway from another checkout's src/, A/B in one run
        env = {"PYTHONPATH": str(Path(args.baseline_src).resolve())}
        targets["latlab-gateway@base"] = gateway_process(stack, [upstream], "--cache", "off",
                                                         env=env)  # fmt: skip
    for name, start in (("latlab-gateway-asgi",  # every request through the ASGI path
                         lambda: gateway_process(stack, [upstream], "--cache", "off",
                                                 "--no-direct-lane")),
                        ("nginx", lambda: nginx(stack, upstream, work)),
                        ("pyrelay", lambda: pyrelay(stack, upstream)),
                        ("pyproxy", lambda: pyproxy(stack, upstream)),
                        ("pyproxy-checked", lambda: pyproxy(stack, upstream, checked=True)),
                        ("sglang-router", lambda: sglang_router(stack, upstream)),
                        ("litellm", lambda: litellm(stack, upstream, work))):  # fmt: skip
        if name in args.others.split(","):
            started = start()
            if started is not None:
                targets[name] = started
    for spec, req_us, chunk_us in args.pyproxy_burn:  # the work budget study
        targets[f"pyproxy+{spec}"] = pyproxy(stack, upstream, burn=(req_us, chunk_us))
    return targets


def burn_specs(text: str) -> list[tuple[str, float, float]]:
    """``--pyproxy-burn REQ_US:CHUNK_US,...`` as (spec, request us, chunk us) triples."""
    specs = []
    for spec in filter(None, text.split(",")):
        parts = spec.split(":")
        try:
            req_us, chunk_us = (float(x) for x in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{spec!r}: write REQ_US:CHUNK_US, microseconds of spinning per request and per "
                "upstream read, e.g. 300:0 or 0:15"
            ) from None
        if req_us < 0 or chunk_us < 0:
            raise argparse.ArgumentTypeError(f"{spec!r}: microseconds cannot be negative")
        specs.append((spec, req_us, chunk_us))
    return specs


def cpu_list(text: str) -> set[int]:
    """``--proxy-cpus 1`` or ``2,3`` or ``2-3``: CPUs this process may use, leaving others."""
    cpus: set[int] = set()
    try:
        for part in filter(None, text.split(",")):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write CPU numbers, e.g. 1 or 2,3 or 2-3"
        ) from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed or cpus == allowed:
        raise argparse.ArgumentTypeError(
            f"--proxy-cpus {text!r}: name some, not all, of the CPUs this process may use "
            f"({', '.join(map(str, sorted(allowed)))})"
        )
    return cpus


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` and of the rest of its process group onto ``cpus``."""
    for member in {pid, *group_members(pid)}:
        try:
            tids = [int(t.name) for t in Path(f"/proc/{member}/task").iterdir()]
        except FileNotFoundError:  # it ended meanwhile
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:  # that thread ended meanwhile
                continue


def overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``--proxy-cpus``: the proxies on those CPUs, the stub and ``latlab bench`` (this process's
    children) on the others, so each proxy is measured with a core of its own."""
    levels = [int(x) for x in args.levels.split(",")]
    if args.proxy_cpus:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - args.proxy_cpus)
    with ExitStack() as stack:
        upstream = stub(stack, args.stub_chunks)
        targets = overhead_targets(args, stack, upstream, work)
        if args.proxy_cpus:
            for _url, pid in targets.values():
                if pid:  # the direct target has no proxy
                    pin(pid, args.proxy_cpus)
        rows = []
        for c in levels:
            for r in range(args.repeats):
                for name, (url, pid) in targets.items():  # interleaved: A B C A B C ...
                    post(upstream + "/stub/reset")
                    extra = ["--warmup", str(min(c, 16)), "--input-len", "32", "--output-len",
                             "64", "--tokenizer", str(TOKENIZER)]  # fmt: skip
                    before = cpu_seconds(pid) if pid else 0.0
                    view = _gateway_view(url) if name.startswith("latlab-gateway") else None
                    level = bench(url, work / f"o-{name}-{c}-{r}.json", concurrency=c,
                                  requests=REQUESTS.get(c, 4 * c), extra=extra)  # fmt: skip
                    truth = json.loads(get(upstream + "/stub/stats"))["first_chunk_ms"]
                    rows.append(_overhead_row(name, c, r, level, truth))
                    rows[-1]["cpu_us_per_chunk"] = _cpu_per_chunk(pid, before, level,
                                                                  args.stub_chunks)  # fmt: skip
                    if view is not None:
                        rows[-1].update(_view_means(view, _gateway_view(url)))
                    print(_fmt_overhead(rows[-1]), flush=True)
    summary = _overhead_summary(rows, levels, list(targets))
    for item in summary:
        mine = [r for r in rows if r["target"] == item["target"]
                and r["concurrency"] == item["concurrency"]]  # fmt: skip
        for key in ("cpu_us_per_chunk", *_VIEW):
            item[key] = med([r.get(key) for r in mine])
    return {"rows": rows, "summary": summary}


# The gateway's own view of a run, from its /metrics: mean wait from a request's first byte to
# its handler, and mean TTFT from that first byte (row key -> histogram name).
_VIEW = {"gw_wait_ms": "latlab:gateway_request_wait_seconds",
         "gw_ttft_ms": "latlab:gateway_time_to_first_token_seconds"}  # fmt: skip


def _gateway_view(url: str) -> dict[str, float]:
    text = get(url + "/metrics")
    return {f"{h}_{part}": metric(text, f"{h}_{part}") for h in _VIEW.values()
            for part in ("sum", "count")}  # fmt: skip


def _view_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, h in _VIEW.items():
        n = after[f"{h}_count"] - before[f"{h}_count"]
        total = after[f"{h}_sum"] - before[f"{h}_sum"]
        out[key] = round(1e3 * total / n, 3) if n else None
    return out


def _cpu_per_chunk(pid: int | None, before: float, level: dict, per_request: int) -> float | None:
    """The proxy process's CPU time per forwarded chunk (``per_request`` chunks a request: with
    1, its CPU per request), warm-up included in both the time and the count."""
    if not pid:
        return None
    chunks = (level["summary"]["completed"] + level.get("warmup_requests", 0)) * per_request
    return round(1e6 * (cpu_seconds(pid) - before) / max(1, chunks), 1)


def _overhead_row(name: str, c: int, r: int, level: dict, truth: list[float]) -> dict:
    s = level["summary"]
    gap = s.get("chunk_gap_ms") or {}  # none when each answer is one chunk (--stub-chunks 1)
    return {"target": name, "concurrency": c, "repeat": r, "completed": s["completed"],
            "failed": s["failed"], "ttft_p50": s["ttft_ms"]["p50"], "ttft_p99": s["ttft_ms"]["p99"],
            "gap_p50": gap.get("p50"), "gap_p99": gap.get("p99"),
            "server_first_chunk_p50": statistics.median(truth) if truth else None,
            "client_bound": level["client"]["client_bound"]}  # fmt: skip


def _fmt_overhead(row: dict) -> str:
    cpu = row.get("cpu_us_per_chunk")
    return (f"  {row['target']:>19} c={row['concurrency']:<4} r{row['repeat']} "
            f"TTFT p50 {row['ttft_p50']:.2f} p99 {row['ttft_p99']:.2f} gap p50 "
            f"{_cell(row['gap_p50'], 2)} ms ok {row['completed']} fail {row['failed']}"
            + (f" cpu {cpu} us/chunk" if cpu else "")
            + (f" | own view: wait {row['gw_wait_ms']} ms, TTFT {row['gw_ttft_ms']} ms (means)"
               if row.get("gw_wait_ms") is not None else ""))  # fmt: skip


def _overhead_summary(rows: list[dict], levels: list[int], names: list[str]) -> list[dict]:
    """Per level and target: medians, and the median of per-repeat differences to direct."""
    out = []
    for c in levels:
        direct = {r["repeat"]: r for r in rows if r["target"] == "direct" and r["concurrency"] == c}
        for name in names:
            mine = [r for r in rows if r["target"] == name and r["concurrency"] == c]
            added = [r["ttft_p50"] - direct[r["repeat"]]["ttft_p50"] for r in mine]
            gap_added = [
                r["gap_p50"] - direct[r["repeat"]]["gap_p50"]
                for r in mine
                if r["gap_p50"] is not None and direct[r["repeat"]]["gap_p50"] is not None
            ]
            out.append({"target": name, "concurrency": c,
                        "ttft_p50": med([r["ttft_p50"] for r in mine]),
                        "ttft_p99": med([r["ttft_p99"] for r in mine]),
                        "gap_p50": med([r["gap_p50"] for r in mine]),
                        "ttft_p50_added": med(added), "gap_p50_added": med(gap_added),
                        "failed": sum(r["failed"] for r in mine)})  # fmt: skip
    return out


# ---- waves ------------------------------------------------------------------------------

_WAVE_IDS = itertools.count()


def _wave_body() -> bytes:
    """A request of its own: identical deterministic requests in flight would share one upstream
    call in the gateway (coalescing), and a burst of them would measure its fan-out, not its
    forwarding (as this study did before 2026-11-30 15:45 UTC)."""
    prompt = f"request {next(_WAVE_IDS)}: " + "hello " * 32
    return json.dumps({"model": "stub-model", "prompt": prompt, "max_tokens": 64,
                       "temperature": 0, "stream": True}).encode()  # fmt: skip


async def _first_byte_ms(pool: Any) -> float:
    reads: list = []
    t0 = time.perf_counter_ns()
    await pool.post("/v1/completions", _wave_body(), {"Content-Type": "application/json"}, reads,
                    60)  # fmt: skip
    return (reads[0][0] - t0) / 1e6


async def _waves(url: str, streams: int, count: int) -> list[float]:
    """``count`` waves of ``streams`` requests sent at once; each request's TTFT."""
    from latlab.bench.rawhttp import RawHTTPPool

    host, port = url.split("//", 1)[1].rsplit(":", 1)
    pool = RawHTTPPool(host, int(port))
    await pool.prewarm(streams)
    ttfts: list[float] = []
    try:
        for _ in range(count):
            ttfts += await asyncio.gather(*(_first_byte_ms(pool) for _ in range(streams)))
    finally:
        pool.close()
    return ttfts


def waves(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Bursts of N simultaneous streams from a light raw client (latlab's own HTTP/1.1 client,
    no bench process per run): TTFT p50 added and the proxies' CPU per chunk, the targets'
    order rotated every repeat so none always runs after another."""
    c, chunks = int(args.levels.split(",")[-1]), args.stub_chunks
    with ExitStack() as stack:
        upstream = stub(stack, chunks)
        targets = overhead_targets(args, stack, upstream, work)
        names = list(targets)
        asyncio.run(_waves(upstream, c, 1))
        rows = []
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                url, pid = targets[name]
                before = cpu_seconds(pid) if pid else 0.0
                ttfts = asyncio.run(_waves(url, c, args.waves))
                cpu = cpu_seconds(pid) - before if pid else None
                rows.append({"target": name, "concurrency": c, "repeat": r,
                             "ttft_p50": statistics.median(ttfts),
                             "ttft_p99": sorted(ttfts)[int(0.99 * (len(ttfts) - 1))],
                             "cpu_us_per_chunk": round(1e6 * cpu / (len(ttfts) * chunks), 1)
                             if cpu is not None else None})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "summary": _waves_summary(rows, names)}


def _waves_summary(rows: list[dict], names: list[str]) -> list[dict]:
    direct = {r["repeat"]: r["ttft_p50"] for r in rows if r["target"] == "direct"}
    out = []
    for name in names:
        mine = [r for r in rows if r["target"] == name]
        out.append({"target": name, "concurrency": mine[0]["concurrency"],
                    "ttft_p50": med([r["ttft_p50"] for r in mine]),
                    "ttft_p99": med([r["ttft_p99"] for r in mine]),
                    "ttft_p50_added": med([r["ttft_p50"] - direct[r["repeat"]] for r in mine]),
                    "cpu_us_per_chunk": med([r["cpu_us_per_chunk"] for r in mine])})  # fmt: skip
    return out


# ---- HTTP parser --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and the rest of its process group
    (``latlab gateway --workers N``'s workers; each process here leads its own group)."""
    total = 0
    for member in {pid, *group_members(pid)}:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # it ended between the listing and the read
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def parser(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The gateway's own CPU per forwarded chunk and its added TTFT, h11 vs httptools.

    CPU time of the gateway process is what a busy machine cannot hide: per chunk it is the
    same whatever else runs, while wall-clock latency on a loaded box mostly measures waiting.
    """
    c = int(args.levels.split(",")[-1])
    with ExitStack() as stack:
        upstream = stub(stack)
        gateways = {name: gateway_process(stack, [upstream], "--cache", "off",
                                          env={"LATLAB_HTTP_PARSER": name})
                    for name in ("h11", "httptools")}  # fmt: skip
        targets = {"direct": (upstream, None), **gateways}
        rows = []
        for r in range(args.repeats):
            for name, (url, pid) in targets.items():  # interleaved: A B C A B C ...
                post(upstream + "/stub/reset")
                before = cpu_seconds(pid) if pid else 0.0
                extra = ["--warmup", "0", "--input-len", "32", "--output-len", "64",
                         "--tokenizer", str(TOKENIZER)]  # fmt: skip
                level = bench(url, work / f"p-{name}-{r}.json", concurrency=c,
                              requests=args.requests, extra=extra)  # fmt: skip
                row = _overhead_row(name, c, r, level, [])
                chunks = level["summary"]["completed"] * 64
                row["cpu_us_per_chunk"] = (
                    round(1e6 * (cpu_seconds(pid) - before) / chunks, 1) if pid else None
                )
                rows.append(row)
                print(_fmt_overhead(row), row["cpu_us_per_chunk"], "us CPU/chunk", flush=True)
    summary = _overhead_summary(rows, [c], list(targets))
    for item in summary:
        mine = [r["cpu_us_per_chunk"] for r in rows if r["target"] == item["target"]]
        item["cpu_us_per_chunk"] = med(mine)
    return {"rows": rows, "summary": summary}


# ---- cache -------------------------------------------------------------------------------


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def repeats_dataset(path: Path, n: int, repeat_share: float, seed: int) -> int:
    """``n`` prompts of which ``repeat_share`` repeat an earlier one; the number of repeats."""
    rng = random.Random(seed)
    unique = round(n * (1 - repeat_share))
    prompts = [f"Q{seed}-{i}: " + _sentence(rng, 60) for i in range(unique)]
    order = list(prompts)
    for _ in range(n - unique):
        at = rng.randrange(1, len(order) + 1)
        order.insert(at, rng.choice(order[:at]))
    path.write_text("".join(json.dumps({"prompt": p, "output_len": 32}) + "\n" for p in order))
    return n - unique


def cache(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Each run has prompts of its own (the engine's prefix cache never helps a later run);
    the direct run, with the same repeat pattern, shows what the engine alone makes of repeats.
    """
    runs = []
    with ExitStack() as stack:
        upstream = serve(stack)
        warm = work / "warm.jsonl"
        repeats_dataset(warm, 8, 0.0, seed=99)
        bench(upstream, work / "warm.json", concurrency=2, requests=8,
              extra=["--dataset", f"jsonl:{warm}", "--warmup", "0"])  # fmt: skip
        for r in range(args.repeats):
            for c in (1, 8):
                seeds = (10_000 * r + 2 * c, 10_000 * r + 2 * c + 1)
                data = [work / f"repeats-{s}.jsonl" for s in seeds]
                counts = [repeats_dataset(d, args.requests, 0.25, seed=s)
                          for d, s in zip(data, seeds, strict=True)]  # fmt: skip
                repeated = counts[0]
                gw = gateway(stack, [upstream], "--cache", f"sqlite:{work / f'c{r}-{c}.sqlite'}")
                order = [("gw", gw, data[0]), ("direct", upstream, data[1])]
                out = {}
                for name, url, d in order if r % 2 == 0 else order[::-1]:  # alternate the order
                    extra = ["--dataset", f"jsonl:{d}", "--warmup", "0"]
                    out[name] = bench(url, work / f"c-{name}-{r}-{c}.json", concurrency=c,
                                      requests=args.requests, extra=extra)  # fmt: skip
                runs.append(_cache_row(r, c, repeated, out["gw"], out["direct"]))
                print(json.dumps(runs[-1]), flush=True)
    return {"runs": runs, "summary": _cache_summary(runs)}


def _cache_summary(runs: list[dict]) -> list[dict]:
    out = []
    for c in sorted({r["concurrency"] for r in runs}):
        mine = [r for r in runs if r["concurrency"] == c]
        hits = [r["outcomes"].get("hit", 0) / r["requests"] for r in mine]
        served = [(r["outcomes"].get("hit", 0) + r["outcomes"].get("coalesced", 0)) / r["requests"]
                  for r in mine]  # fmt: skip
        hit, miss = med([r["hit_ttft_p50"] for r in mine]), med([r["miss_ttft_p50"] for r in mine])
        out.append({"concurrency": c, "hit_rate": med(hits), "hit_or_coalesced_rate": med(served),
                    "hit_ttft_p50": hit, "miss_ttft_p50": miss,
                    "hit_vs_miss": round(hit / miss - 1, 3) if hit and miss else None,
                    "gateway_ttft_p50": med([r["gateway_ttft_p50"] for r in mine]),
                    "direct_ttft_p50": med([r["direct_ttft_p50"] for r in mine])})  # fmt: skip
    return out


def _cache_row(r: int, c: int, repeated: int, through: dict, direct: dict) -> dict:
    labels = [rec["gateway_cache"] for rec in through["records"]]
    by = through.get("by_gateway_cache", {})
    return {"repeat": r, "concurrency": c, "requests": len(labels), "repeats_in_workload": repeated,
            "outcomes": {k: labels.count(k) for k in sorted(set(labels))},
            "hit_ttft_p50": by.get("hit", {}).get("ttft_ms", {}).get("p50"),
            "miss_ttft_p50": by.get("miss", {}).get("ttft_ms", {}).get("p50"),
            "coalesced_ttft_p50": by.get("coalesced", {}).get("ttft_ms", {}).get("p50"),
            "gateway_ttft_p50": through["summary"]["ttft_ms"]["p50"],
            "direct_ttft_p50": direct["summary"]["ttft_ms"]["p50"]}  # fmt: skip


# ---- routing -----------------------------------------------------------------------------


def prefix_dataset(path: Path, n: int, groups: int, hot_share: float | None, seed: int) -> None:
    """Requests over ``groups`` long prefixes: evenly, or ``hot_share`` of them on prefix 0."""
    rng = random.Random(seed)
    prefixes = [f"[doc {seed}-{g}] " + _sentence(rng, 280) for g in range(groups)]
    lines = []
    for i in range(n):
        if hot_share is None:
            g = i % groups
        else:
            g = 0 if rng.random() < hot_share else rng.randrange(1, groups)
        prompt = prefixes[g] + f" question {i}: " + _sentence(rng, 12)
        lines.append(json.dumps({"prompt": prompt, "output_len": 16}))
    path.write_text("\n".join(lines) + "\n")


def routing(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    policies = ["prefix", "round-robin", "least-load"]
    rows = []
    with ExitStack() as stack:
        replicas = [serve(stack), serve(stack)]
        gateways = {p: gateway(stack, replicas, "--cache", "off", "--route", p) for p in policies}
        for workload, hot in (("8 groups", None), ("hot prefix 80%", 0.8)):
            for r in range(args.repeats):
                for p in policies:  # interleaved; each run has prefixes of its own
                    seed = hash((workload, r, p)) % 10**6
                    data = work / f"route-{seed}.jsonl"
                    prefix_dataset(data, args.requests, 8, hot, seed)
                    rows.append(_route_run(p, workload, r, gateways[p], replicas, data, args))
                    print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "summary": _route_summary(rows)}


def _route_run(policy: str, workload: str, r: int, gw: str, replicas: list[str], data: Path,
               args: argparse.Namespace) -> dict:  # fmt: skip
    before = [get(u + "/metrics") for u in replicas]
    gw_before = get(gw + "/metrics")
    extra = ["--dataset", f"jsonl:{data}", "--warmup", "0"]
    level = bench(gw, data.with_suffix(".json"), concurrency=args.concurrency,
                  requests=args.requests, extra=extra)  # fmt: skip
    after = [get(u + "/metrics") for u in replicas]
    gw_after = get(gw + "/metrics")
    queries, hits = "latlab:prefix_cache_queries_total", "latlab:prefix_cache_hits_total"
    q = [metric(a, queries) - metric(b, queries) for a, b in zip(after, before, strict=True)]
    h = [metric(a, hits) - metric(b, hits) for a, b in zip(after, before, strict=True)]
    split = [metric(gw_after, "latlab:gateway_upstream_requests_total", f'upstream="{u}"')
             - metric(gw_before, "latlab:gateway_upstream_requests_total", f'upstream="{u}"')
             for u in replicas]  # fmt: skip
    s = level["summary"]
    return {"policy": policy, "workload": workload, "repeat": r,
            "ttft_p50": s["ttft_ms"]["p50"], "ttft_p99": s["ttft_ms"]["p99"],
            "failed": s["failed"], "prefix_hit_rate": sum(h) / sum(q) if sum(q) else None,
            "per_replica_hit_rate": [x / y if y else None for x, y in zip(h, q, strict=True)],
            "requests_per_replica": split}  # fmt: skip


def _route_summary(rows: list[dict]) -> list[dict]:
    out = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        for policy in dict.fromkeys(r["policy"] for r in rows):
            mine = [r for r in rows if r["workload"] == workload and r["policy"] == policy]
            busiest = [max(r["requests_per_replica"]) / max(1, sum(r["requests_per_replica"]))
                       for r in mine]  # fmt: skip
            out.append({"workload": workload, "policy": policy,
                        "ttft_p50": med([r["ttft_p50"] for r in mine]),
                        "ttft_p99": med([r["ttft_p99"] for r in mine]),
                        "prefix_hit_rate": med([r["prefix_hit_rate"] for r in mine]),
                        "busiest_replica_share": med(busiest),
                        "failed": sum(r["failed"] for r in mine)})  # fmt: skip
    return out


# ---- report ------------------------------------------------------------------------------


def _cell(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def report(paths: list[Path]) -> str:
    """Markdown tables (docs/gateway.md) from the studies' JSON files."""
    out = []
    for path in paths:
        data = json.loads(path.read_text())
        load = data["machine_before"]["load_avg_1_5_15"]
        out.append(f"{data['study']} ({path.name}, load average before {load[0]}, after "
                   f"{data['machine_after']['load_avg_1_5_15'][0]}):\n")  # fmt: skip
        out.append(_TABLES[data["study"]](data["summary"]))
    return "\n".join(out)


def _overhead_table(rows: list[dict]) -> str:
    lines = ["| target | streams | TTFT p50 | added | TTFT p99 | chunk gap p50 | gap added |"
             " proxy CPU per chunk | gateway's own: wait / TTFT (means) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cpu, wait = r.get("cpu_us_per_chunk"), r.get("gw_wait_ms")
        own = f"{_cell(wait, 2)} / {_cell(r.get('gw_ttft_ms'))} ms" if wait is not None else "-"
        lines.append(f"| {r['target']} | {r['concurrency']} | {_cell(r['ttft_p50'])} ms | "
                     f"{_cell(r['ttft_p50_added'], 1, True)} ms | {_cell(r['ttft_p99'])} ms | "
                     f"{_cell(r['gap_p50'], 2)} ms | "
                     f"{_cell(r['gap_p50_added'], 2, True)} ms | "
                     f"{_cell(cpu) + ' us' if cpu else '-'} | {own} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _cache_table(rows: list[dict]) -> str:
    lines = ["| streams | hit rate | hit or coalesced | TTFT p50 hit | TTFT p50 miss |"
             " hit vs miss | TTFT p50 all, gateway | TTFT p50 all, direct |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        change = None if r["hit_vs_miss"] is None else 100 * r["hit_vs_miss"]
        lines.append(f"| {r['concurrency']} | {_cell(100 * r['hit_rate'], 0)}% | "
                     f"{_cell(100 * r['hit_or_coalesced_rate'], 0)}% | "
                     f"{_cell(r['hit_ttft_p50'], 2)} ms | {_cell(r['miss_ttft_p50'])} ms | "
                     f"{_cell(change, 1, True)}% | {_cell(r['gateway_ttft_p50'])} ms | "
                     f"{_cell(r['direct_ttft_p50'])} ms |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _routing_table(rows: list[dict]) -> str:
    lines = ["| workload | policy | TTFT p50 | TTFT p99 | replicas' prefix-cache hit rate |"
             " busiest replica's share |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        hit = None if r["prefix_hit_rate"] is None else 100 * r["prefix_hit_rate"]
        lines.append(f"| {r['workload']} | {r['policy']} | {_cell(r['ttft_p50'])} ms | "
                     f"{_cell(r['ttft_p99'])} ms | {_cell(hit, 1)}% | "
                     f"{_cell(100 * r['busiest_replica_share'], 0)}% |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _parser_table(rows: list[dict]) -> str:
    lines = ["| target | streams | proxy CPU per chunk | TTFT p50 | added | TTFT p99 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        added = _cell(r["ttft_p50_added"], 1, True)
        cpu = r["cpu_us_per_chunk"]
        lines.append(f"| {r['target']} | {r['concurrency']} | "
                     f"{_cell(cpu) + ' us' if cpu else '-'} | {_cell(r['ttft_p50'])} ms | "
                     f"{added} ms | {_cell(r['ttft_p99'])} ms |")  # fmt: skip
    return "\n".join(lines) + "\n"


_TABLES = {"overhead": _overhead_table, "waves": _parser_table, "cache": _cache_table,
           "routing": _routing_table, "parser": _parser_table}  # fmt: skip


# ---- main --------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=["overhead", "waves", "cache", "routing", "parser", "report"])
    p.add_argument("results", nargs="*", type=Path, help="report: the studies' JSON files")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--levels", default="1,64,256", help="overhead: concurrency levels")
    p.add_argument("--others", default="nginx,pyrelay,pyproxy-checked,litellm,sglang-router",
                   help="overhead/waves: other proxies measured in the same run")  # fmt: skip
    p.add_argument("--pyproxy-burn", default=[], type=burn_specs,
                   help="overhead/waves: REQ_US:CHUNK_US,... pyproxy runs spinning that long per "
                        "request and per upstream read (what the gateway may spend)")  # fmt: skip
    p.add_argument("--requests", type=int, default=96,
                   help="cache/routing/parser: requests per run")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=8, help="routing: concurrent streams")
    p.add_argument("--waves", type=int, default=3, help="waves: bursts per target and repeat")
    p.add_argument("--stub-chunks", type=int, default=64,
                   help="overhead/waves: chunks per answer (1: CPU per chunk = per "
                   "request)")  # fmt: skip
    p.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        metavar="N",
        help="overhead: also run latlab gateway --workers N (N > 1)",
    )
    p.add_argument("--baseline-src", default=None, metavar="DIR",
                   help="overhead: also run the gateway from DIR (another checkout's src/), "
                   "interleaved with this one")  # fmt: skip
    p.add_argument("--proxy-cpus", type=cpu_list, default=None, metavar="CPUS",
                   help="overhead: pin every proxy to these CPUs and the stub and latlab bench "
                   "to the others (a proxy with a core of its own)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.study == "report":
        print(report(args.results))
        return
    started = machine()
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="latlab-gw-bench-") as tmp:
        studies = {"overhead": overhead, "waves": waves, "cache": cache, "routing": routing,
                   "parser": parser}  # fmt: skip
        study = studies[args.study]
        t0 = time.perf_counter()
        result = study(args, Path(tmp))
    result.update(study=args.study, machine_before=started, machine_after=machine(),
                  wall_s=round(time.perf_counter() - t0, 1), argv=sys.argv[1:])  # fmt: skip
    for row in result.get("summary", []):
        print(json.dumps(row))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
