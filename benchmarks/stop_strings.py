"""Stop-string matching per generated token, and its setup per request, as the list grows.

Anchor: the matching latlab's detokenizer did first (for every stop string, ``str.find`` in
the window where it could have appeared), measured in the same run on the same text. "now" is
latlab.engine.stop_strings; ``--anchor-ref REF`` also runs that module as it was at commit REF
(e.g. the Aho-Corasick automaton of 5d3c0e1..b181104), loaded from git. Text arrives in deltas
of 4 characters, as a token's text does; no stop string ever matches, so every step pays the
full search. Setup (building the index or automaton, once per request) is reported apart.
Rows: random stop strings of 4-12 characters over random text; then the server's limit (64
stop strings of 1,000 characters) over random text, and over text that keeps running along
their shared beginning (the worst case for the window). Times are CPU time of this process
(``time.process_time``): the machine is shared, and wall time there measures the other users
as much as the matching. The search over 10,000 stop strings and more runs on the first 100
deltas only (each step costs the same).

    nice -n 10 .venv/bin/python benchmarks/stop_strings.py --anchor-ref b181104 \
        --json benchmarks/results/stop_strings.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import subprocess
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

from latlab.engine.stop_strings import StopStrings

COUNTS = (1, 4, 64, 1_000, 10_000, 100_000)
REPO = Path(__file__).resolve().parents[1]


def previous_search(stops: list[str], deltas: list[str]) -> None:
    """The detokenizer's former ``_find_stop``: every stop string searched every step."""
    text = ""
    longest = max(map(len, stops))
    for delta in deltas:
        text += delta
        start = max(0, len(text) - len(delta) - longest + 1)
        hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
        if hits:
            raise AssertionError("the workload must not match")


def matching(compiled: StopStrings, deltas: list[str]) -> None:
    matcher = compiled.matcher()
    for delta in deltas:
        if matcher.feed(delta) is not None:
            raise AssertionError("the workload must not match")


def _deltas(text: str) -> list[str]:
    return [text[i : i + 4] for i in range(0, len(text), 4)]


def workloads(rng: random.Random) -> Iterator[tuple[str, list[str], list[str]]]:
    """(label, stop strings, text deltas); no stop string ever completes."""
    text = "".join(rng.choices(string.ascii_lowercase + " ", k=4000))
    for count in COUNTS:
        # 4-12 letters ending in '#'; the text has no '#'.
        stops = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 11))) + "#"
                 for _ in range(count)]  # fmt: skip
        yield f"{count:,}", stops, _deltas(text)
    # The server's limits (--max-stop 64) with 1,000 characters each, as serve_hostile.py.
    long_stops = [f"{i:03d}" + "x" * 997 for i in range(64)]
    yield "64 x 1,000 chars", long_stops, _deltas(text)
    # Text running along their shared 999-character beginning: the window stays full.
    running = ["x" * 999 + f"{i:02d}" for i in range(64)]
    yield "64 x 1,000, text along them", running, _deltas("x" * 4000)


def previous_module(ref: str) -> types.ModuleType:
    """latlab.engine.stop_strings as it was at ``ref``."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:src/latlab/engine/stop_strings.py"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    module = types.ModuleType(f"stop_strings_{ref}")
    exec(compile(source, f"{ref}:stop_strings.py", "exec"), module.__dict__)
    return module


def built(factory: Callable[[list[str]], StopStrings], stops: list[str]) -> tuple[object, float]:
    started = time.process_time()
    compiled = factory(stops)
    return compiled, (time.process_time() - started) * 1e3


def per_token_us(fn, arg, deltas: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn(arg, deltas)
        times.append(time.process_time() - start)
    return statistics.median(times) / len(deltas) * 1e6


def measure(label: str, stops: list[str], deltas: list[str], args, previous) -> dict:
    row: dict = {"stop_strings": label}
    searched = deltas if len(stops) < 10_000 else deltas[:100]
    row["search_us_per_token"] = round(
        per_token_us(previous_search, stops, searched, args.repeats), 2
    )
    if previous is not None:
        compiled, build_ms = built(previous.StopStrings, stops)
        row["previous_us_per_token"] = round(
            per_token_us(matching, compiled, deltas, args.repeats), 2
        )
        row["previous_build_ms"] = round(build_ms, 2)
        del compiled
    compiled, build_ms = built(StopStrings, stops)
    row["now_us_per_token"] = round(per_token_us(matching, compiled, deltas, args.repeats), 2)
    row["now_build_ms"] = round(build_ms, 2)
    return row


def print_row(row: dict) -> None:
    previous = ""
    if "previous_us_per_token" in row:
        previous = f"{row['previous_us_per_token']:>13,.2f} {row['previous_build_ms']:>11,.1f}"
    print(f"{row['stop_strings']:>28} {row['search_us_per_token']:>12,.2f} {previous}"
          f"{row['now_us_per_token']:>10,.2f} {row['now_build_ms']:>9,.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--anchor-ref", default=None, help="git ref of a previous implementation")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    previous = previous_module(args.anchor_ref) if args.anchor_ref else None
    load_before = os.getloadavg()
    head = f"{'previous us/tok':>15} {'build ms':>9} " if previous else ""
    print(f"{'stop strings':>28} {'search us/tok':>12} {head}{'now us/tok':>10} {'build ms':>9}")
    rows = []
    for label, stops, deltas in workloads(random.Random(0)):
        rows.append(measure(label, stops, deltas, args, previous))
        print_row(rows[-1])
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"load average before {load['before']}, after {load['after']}")
    if args.json:
        result = {"rows": rows, "load": load, "anchor_ref": args.anchor_ref}
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
