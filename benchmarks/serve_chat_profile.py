"""Where a hostile chat request's time goes in latlab serve: py-spy while one client sends it.

One client sends ``serve_hostile.py``'s 1,024-message chat back to back; py-spy samples the
server twice: with ``--gil`` (only the thread holding the GIL: what keeps the engine thread and
the event loop waiting) and with ``--idle --threads`` (the preparation thread's wall time). The
samples are sorted into template rendering, tokenizer, JSON checks and body validation, and
turned into milliseconds per request from the request rate. With ``--anchor-ref`` the same is
done for latlab serve built from an older commit, one server after the other.

    nice -n 10 .venv/bin/python benchmarks/serve_chat_profile.py --anchor-ref 2d2d414 \\
        --json benchmarks/results/serve_chat_profile_2026-11-30.json

Needs py-spy (``pip install py-spy``; ``--py-spy PATH`` if it is not on PATH) and the right to
attach to a child process (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
from serve_hostile import JSON, REPO, checkout, scenarios, server

RATE_HZ = 250
# First match wins: a stack is counted once, under the first of these its frames contain.
CATEGORIES = (
    ("template rendering", ("apply_chat_template",)),
    ("tokenizer", ("count_past", "_encode (")),
    ("JSON checks (guard)", ("check_json", "check_shape", "_depth_exceeds")),
    ("body validation (pydantic)", ("parse_request", "model_validate")),
)


def _send(base: str, body: bytes, stop: threading.Event, out: dict) -> None:
    sent, start = 0, time.perf_counter()
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            client.post(f"{base}/v1/chat/completions", content=body, headers=JSON)
            sent += 1
    out.update(sent=sent, seconds=time.perf_counter() - start)


def _record(py_spy: str, pid: int, seconds: float, flags: list[str], path: Path) -> None:
    argv = [py_spy, "record", *flags, "--rate", str(RATE_HZ), "--duration", str(int(seconds))]
    argv += ["--format", "raw", "-o", str(path), "--pid", str(pid)]
    subprocess.run(argv, check=True, capture_output=True)


def _classify(path: Path, only_thread: str | None) -> collections.Counter[str]:
    """Samples per category in a py-spy raw file (``stack count`` lines)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        if only_thread and only_thread not in stack:
            continue
        name = next((c for c, keys in CATEGORIES if any(k in stack for k in keys)), "other")
        counts[name] += int(n)
    return counts


def profile(src: Path, label: str, py_spy: str, seconds: float) -> dict:
    """Per-request milliseconds by category for latlab serve built from ``src``."""
    body = next(s for s in scenarios() if s.name == "chat-1024-messages").body
    stop, sent = threading.Event(), {}
    with server(src, None, label, []) as (base, pid), tempfile.TemporaryDirectory() as tmp:
        sender = threading.Thread(target=_send, args=(base, body, stop, sent))
        sender.start()
        time.sleep(1.0)
        gil, wall = Path(tmp) / "gil.txt", Path(tmp) / "wall.txt"
        _record(py_spy, pid, seconds, ["--gil"], gil)
        _record(py_spy, pid, seconds, ["--idle", "--threads"], wall)
        stop.set()
        sender.join()
        rate = sent["sent"] / sent["seconds"]
        per_request = seconds * rate  # requests answered during one recording
        ms = 1000 / RATE_HZ / per_request
        held = _classify(gil, None)
        prep = _classify(wall, "latlab-prep")
    return {
        "label": label,
        "requests_per_s": round(rate, 1),
        "answered_in_ms": round(1000 / rate, 1),
        "gil_held_ms": {k: round(v * ms, 1) for k, v in held.most_common()},
        "prep_thread_ms": {k: round(v * ms, 1) for k, v in prep.most_common() if k != "other"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--anchor-ref", default=None, help="git ref of the anchor server")
    parser.add_argument("--seconds", type=float, default=6.0, help="each py-spy recording")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result: dict = {"load_before": os.getloadavg(), "rate_hz": RATE_HZ, "sides": []}
    result["sides"].append(profile(REPO / "src", "latlab serve", args.py_spy, args.seconds))
    if args.anchor_ref:
        with checkout(args.anchor_ref) as src:
            label = f"anchor {args.anchor_ref}"
            result["sides"].append(profile(src, label, args.py_spy, args.seconds))
    result["load_after"] = os.getloadavg()
    for side in result["sides"]:
        print(f"\n{side['label']}: {side['requests_per_s']} requests/s, "
              f"one per {side['answered_in_ms']} ms")  # fmt: skip
        print("  GIL held, ms per request:", side["gil_held_ms"])
        print("  preparation thread, ms per request:", side["prep_thread_ms"])
    print(f"\nload average before {result['load_before']}, after {result['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
