"""Does one hostile request stall everyone else? latlab serve under issue 18's inputs.

For each scenario a probe stream (greedy, EOS ignored) runs while the hostile request is sent
over and over, and ``GET /health`` is polled every 10 ms. Figures per scenario: the probe's
largest gap between chunks and /health's slowest answer, as ratios to the quiet scenario of
the same run (goal: within 2x), plus what the hostile requests got back and the server's
peak RSS. Scenarios are interleaved across repeats, and with the anchor's (both servers run
at once; the idle one costs nothing); medians are reported.

Anchor (``--anchor-ref``): the same scenarios against latlab serve built from an older commit
(before the guard), launched the same way in the same run.

    nice -n 10 .venv/bin/python benchmarks/serve_hostile.py --repeats 3 \\
        --anchor-ref baaf37c --json benchmarks/results/serve_hostile.json

``--hostile-every S`` sends the hostile request once every S seconds instead of back to back:
back to back, a server that refuses faster is sent more requests in the same time, so the two
servers are not under the same load; at a fixed rate they are, and the figures compare the cost
of one request.

``--header-timeout S`` (passed to both servers, which must know the flag) makes the half-sent
requests time out while the probe runs: their sockets open ``S - 0.5`` seconds before it
starts, so the heads' timeouts fire half a second into the probe (and the bodies' too when
``--body-timeout`` is short enough).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from latlab.procs import ManagedProcess, ProcessSpec, free_port

REPO = Path(__file__).resolve().parents[1]
_CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"
PROBE = {"prompt": "The", "temperature": 0, "ignore_eos": True, "stream": True}
JSON = {"Content-Type": "application/json"}


# ---- hostile inputs --------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Scenario:
    name: str
    what: str
    body: bytes | None = None  # sent over and over while the probe runs
    path: str = "/v1/completions"
    sockets: Callable[[str], Iterator[None]] | None = None  # held open while the probe runs


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def scenarios() -> list[Scenario]:
    """Issue 18's hostile requests, the guard's own cases, and the largest requests allowed."""
    return [
        Scenario(name="quiet", what="no hostile request"),
        *_oversized_scenarios(),
        *_largest_allowed_scenarios(),
        Scenario(
            name="slowloris-400",
            what="400 connections holding half-sent request heads, 400 holding half-sent bodies",
            sockets=half_sent,
        ),
    ]


def _oversized_scenarios() -> list[Scenario]:
    """Requests far past the guard's limits: the figure is what each costs before its refusal."""
    empty = {"role": "user", "content": ""}
    return [
        Scenario(
            name="chat-700k-empty-messages",
            what="23 MB chat request of 700,000 empty messages",
            path="/v1/chat/completions",
            body=_dumps({"messages": [empty] * 700_000, "max_tokens": 1}),
        ),
        Scenario(
            name="stop-1M-strings",
            what="a million stop strings",
            body=_dumps({"prompt": "hi", "max_tokens": 8, "stop": [f"s{i}" for i in range(10**6)]}),
        ),
        Scenario(
            name="stop-token-ids-1M-min-tokens",
            what="a million stop token ids with min_tokens",
            body=_dumps(
                {
                    "prompt": "hi",
                    "max_tokens": 8,
                    "min_tokens": 4,
                    "stop_token_ids": [i % 4000 for i in range(10**6)],
                }
            ),
        ),
        Scenario(
            name="token-ids-30MB",
            what="30 MB token-id prompt",
            body=_dumps({"prompt": [1] * 15_000_000, "max_tokens": 1}),
        ),
        Scenario(
            name="deep-json",
            what="200 KB of nested brackets",
            body=b'{"prompt": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        ),
    ]


def _largest_allowed_scenarios() -> list[Scenario]:
    """Requests at the guard's limits: the most work one request may make the server do."""
    return [
        Scenario(
            name="chat-1024-messages",
            # 100 characters each stays under the 64-per-context-token character bound of
            # the bundled model (2,048 tokens), so the template renders and the tokenizer runs
            # before the context check refuses it.
            what="the largest chat the guard lets through: 1,024 messages of text",
            path="/v1/chat/completions",
            body=_dumps(
                {
                    "messages": [{"role": "user", "content": "word " * 20}] * 1024,
                    "max_tokens": 1,
                }
            ),
        ),
        Scenario(
            name="stop-64-long-strings",
            what="the most stop strings allowed (64), 1,000 characters each",
            body=_dumps(
                {
                    "prompt": "hi",
                    "max_tokens": 8,
                    "stop": [f"{i:03d}" + "x" * 997 for i in range(64)],
                }
            ),
        ),
    ]


@contextlib.contextmanager
def half_sent(base: str, count: int = 400) -> Iterator[None]:
    host, port = base.removeprefix("http://").split(":")
    head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body = head + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    socks = []
    try:
        for i in range(2 * count):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(head if i % 2 else body)
            socks.append(sock)
        yield
    finally:
        for sock in socks:
            sock.close()


# ---- one measurement -------------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Sample:
    scenario: str
    max_gap_ms: float
    p50_gap_ms: float
    health_max_ms: float
    health_p50_ms: float
    peak_rss_mb: float
    hostile_sent: int = 0
    hostile_statuses: dict[str, int] = field(default_factory=dict)
    hostile_p50_s: float | None = None


def _probe(base: str, tokens: int) -> list[float]:
    """Arrival times of the probe stream's content chunks."""
    arrivals = []
    body = {**PROBE, "max_tokens": tokens}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.perf_counter())
    return arrivals


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _poll_health(base: str, pid: int, stop: threading.Event, out: dict) -> None:
    latencies, rss = [], 0.0
    with httpx.Client(timeout=300) as client:
        while not stop.is_set():
            start = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                client.get(f"{base}/health")
            latencies.append(time.perf_counter() - start)
            rss = max(rss, _rss_mb(pid))
            stop.wait(0.01)
    out.update(latencies=latencies, rss=rss)


def _send_hostile(
    base: str, scenario: Scenario, stop: threading.Event, out: dict, every_s: float | None = None
) -> None:
    """Send the hostile request back to back, or one every ``every_s`` seconds (open loop: the
    same rate whatever the server's answer time, so two servers get the same load)."""
    statuses: Counter[str] = Counter()
    durations = []
    due = time.perf_counter()
    with httpx.Client(timeout=300) as client:
        while not stop.is_set():
            if every_s:
                if stop.wait(max(0.0, due - time.perf_counter())):
                    break
                due += every_s
            start = time.perf_counter()
            try:
                status = str(
                    client.post(
                        base + scenario.path, content=scenario.body, headers=JSON
                    ).status_code
                )
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            durations.append(time.perf_counter() - start)
            statuses[status] += 1
    out.update(statuses=dict(statuses), durations=durations)


def measure(
    base: str,
    pid: int,
    scenario: Scenario,
    tokens: int,
    lead_s: float = 0.3,
    every_s: float | None = None,
) -> Sample:
    stop = threading.Event()
    health: dict = {}
    hostile: dict = {}
    threads = [threading.Thread(target=_poll_health, args=(base, pid, stop, health))]
    if scenario.body is not None:
        threads.append(
            threading.Thread(target=_send_hostile, args=(base, scenario, stop, hostile, every_s))
        )
    holder = scenario.sockets(base) if scenario.sockets else contextlib.nullcontext()
    with holder:
        for thread in threads:
            thread.start()
        time.sleep(lead_s)  # the hostile request is in flight before the probe starts
        arrivals = _probe(base, tokens)
        stop.set()
        for thread in threads:
            thread.join()
    gaps = [1000 * (b - a) for a, b in itertools.pairwise(arrivals)]
    health_ms = [1000 * s for s in health["latencies"]]
    durations = hostile.get("durations") or []
    return Sample(
        scenario=scenario.name,
        max_gap_ms=max(gaps),
        p50_gap_ms=statistics.median(gaps),
        health_max_ms=max(health_ms),
        health_p50_ms=statistics.median(health_ms),
        peak_rss_mb=health["rss"],
        hostile_sent=len(durations),
        hostile_statuses=hostile.get("statuses", {}),
        hostile_p50_s=statistics.median(durations) if durations else None,
    )


# ---- servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def server(src: Path, model: str | None, label: str, flags: list[str]) -> Iterator[tuple[str, int]]:
    port = free_port()
    argv = [sys.executable, "-c", _CLI, "serve", *([model] if model else []), "--port", str(port)]
    argv += flags
    spec = ProcessSpec(argv=argv, name=label, env={"PYTHONPATH": str(src)})
    with ManagedProcess(spec) as proc:
        base = f"http://127.0.0.1:{port}"
        proc.wait_http(f"{base}/health", timeout_s=180)
        _wait_for_prep_process(proc)
        yield base, proc.pid  # type: ignore[misc]


def _wait_for_prep_process(proc: ManagedProcess) -> None:
    """A server that prepares large requests in a child process (latlab.serve.prep) starts it
    in the background; measuring before it is up would measure the thread path, and its
    tokenizer load (~6 s of one core) on top. Older servers print no such line."""
    proc.wait_ready(lambda: "latlab serve: engine: " in proc.log_tail(50), timeout_s=60)
    time.sleep(0.2)  # the next line, when there is one, is printed right after that one
    if "until the preparation process is up" not in proc.log_tail(50):
        return
    proc.wait_ready(lambda: "preparation process ready" in proc.log_tail(50), timeout_s=180,
                    what="preparing in its child process")  # fmt: skip
    line = next(x for x in proc.log_tail(50).splitlines() if "preparation process ready" in x)
    print(f"  {line}", flush=True)


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """``src/`` of an older commit, extracted to a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="latlab-anchor-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield Path(tmp) / "src"


# ---- report ----------------------------------------------------------------------------------


def summarize(samples: list[Sample]) -> list[dict]:
    by_name: dict[str, list[Sample]] = {}
    for sample in samples:
        by_name.setdefault(sample.scenario, []).append(sample)
    quiet = by_name["quiet"]
    quiet_gap = statistics.median(s.max_gap_ms for s in quiet)
    quiet_health = statistics.median(s.health_max_ms for s in quiet)
    rows = []
    for name, group in by_name.items():
        gap = statistics.median(s.max_gap_ms for s in group)
        health = statistics.median(s.health_max_ms for s in group)
        statuses: Counter[str] = Counter()
        for s in group:
            statuses.update(s.hostile_statuses)
        p50s = [s.hostile_p50_s for s in group if s.hostile_p50_s is not None]
        rows.append(
            {
                "scenario": name,
                "max_gap_ms": round(gap, 1),
                "gap_ratio": round(gap / quiet_gap, 2),
                "health_max_ms": round(health, 1),
                "health_ratio": round(health / quiet_health, 2),
                "p50_gap_ms": round(statistics.median(s.p50_gap_ms for s in group), 2),
                "peak_rss_mb": round(max(s.peak_rss_mb for s in group)),
                "hostile_statuses": dict(statuses),
                "hostile_p50_s": round(statistics.median(p50s), 3) if p50s else None,
            }
        )
    return rows


def print_table(label: str, rows: list[dict]) -> None:
    print(f"\n{label}")
    print(
        f"{'scenario':30} {'max gap ms':>10} {'x quiet':>7} {'/health max ms':>14} "
        f"{'x quiet':>7} {'RSS MB':>7}  hostile requests got (median s)"
    )
    for r in rows:
        got = ", ".join(f"{k} x{v}" for k, v in r["hostile_statuses"].items()) or "-"
        took = f" ({r['hostile_p50_s']} s)" if r["hostile_p50_s"] is not None else ""
        print(
            f"{r['scenario']:30} {r['max_gap_ms']:>10} {r['gap_ratio']:>7} "
            f"{r['health_max_ms']:>14} {r['health_ratio']:>7} {r['peak_rss_mb']:>7}  {got}{took}"
        )


@dataclass(kw_only=True, slots=True)
class Side:
    label: str
    src: Path
    repeats: int
    samples: list[Sample] = field(default_factory=list)


def run_sides(sides: list[Side], args: argparse.Namespace) -> None:
    """Both servers up at once (an idle one costs nothing), scenarios interleaved A/B."""
    chosen = [s for s in scenarios() if not args.only or s.name in args.only or s.name == "quiet"]
    flags = [f"--{name.replace('_', '-')}={getattr(args, name)}"
             for name in ("header_timeout", "body_timeout") if getattr(args, name)]  # fmt: skip
    with contextlib.ExitStack() as stack:
        up = [(side, stack.enter_context(server(side.src, args.model, side.label, flags)))
              for side in sides]  # fmt: skip
        for _, (base, _pid) in up:
            _probe(base, 8)  # warm up
        for repeat, scenario in itertools.product(range(max(s.repeats for s in sides)), chosen):
            for side, (base, pid) in up:
                if repeat >= side.repeats:
                    continue
                lead = 0.3
                if scenario.sockets and args.header_timeout:
                    lead = max(lead, args.header_timeout - 0.5)
                sample = measure(base, pid, scenario, args.tokens, lead, args.hostile_every)
                print(f"  {side.label} repeat {repeat + 1}: {scenario.name}: {asdict(sample)}",
                      flush=True)  # fmt: skip
                side.samples.append(sample)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model dir [default: the bundled model]")
    parser.add_argument("--tokens", type=int, default=128, help="probe stream length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--anchor-ref", default=None, help="git ref of the anchor server")
    parser.add_argument("--anchor-repeats", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="scenario names (quiet always runs)")
    parser.add_argument("--header-timeout", type=float, default=None, help="serve flag, both")
    parser.add_argument("--body-timeout", type=float, default=None, help="serve flag, both")
    parser.add_argument(
        "--hostile-every",
        type=float,
        default=None,
        help="seconds between hostile requests (open loop) [default: back to back]",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = {
        "load_before": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    sides = [Side(label="latlab serve", src=REPO / "src", repeats=args.repeats)]
    with contextlib.ExitStack() as stack:
        if args.anchor_ref:
            src = stack.enter_context(checkout(args.anchor_ref))
            sides.append(
                Side(label=f"anchor {args.anchor_ref}", src=src, repeats=args.anchor_repeats)
            )
        run_sides(sides, args)
    result["latlab"] = summarize(sides[0].samples)
    if args.anchor_ref:
        result["anchor"] = summarize(sides[1].samples)
    result["args"] = {k: v for k, v in vars(args).items() if k != "json"}
    result["load_after"] = os.getloadavg()
    print_table("latlab serve (this tree)", result["latlab"])
    if "anchor" in result:
        print_table(f"anchor: latlab serve at {args.anchor_ref}", result["anchor"])
    print(f"\nload average before {result['load_before']}, after {result['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
