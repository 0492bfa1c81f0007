"""Stop-string matching per generated token, as the stop list grows: automaton vs search.

Anchor: the matching latlab's detokenizer did before (for every stop string, ``str.find`` in
the window where it could have appeared), measured in the same run on the same text. The
automaton (latlab.engine.stop_strings) is what the engine runs now. Text arrives in deltas of
a few characters, as a token's text does; no stop string ever matches, so every step pays the
full search. Build time (once per request, where the parameters are made) is reported apart.
Times are CPU time of this process (``time.process_time``): the machine is shared, and wall
time there measures the other users as much as the matching. The search over 10,000 stop
strings and more runs on the first 100 deltas only (each step costs the same).

    nice -n 10 .venv/bin/python benchmarks/stop_strings.py \
        --json benchmarks/results/stop_strings.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import time
from pathlib import Path

from latlab.engine.stop_strings import StopStrings

COUNTS = (1, 4, 64, 1_000, 10_000, 100_000)


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


def automaton(compiled: StopStrings, deltas: list[str]) -> None:
    matcher = compiled.matcher()
    for delta in deltas:
        if matcher.feed(delta) is not None:
            raise AssertionError("the workload must not match")


def workload(count: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """``count`` stop strings of 4-12 letters ending in '#', text without '#' (no match)."""
    stops = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 11))) + "#"
             for _ in range(count)]  # fmt: skip
    text = "".join(rng.choices(string.ascii_lowercase + " ", k=4000))
    deltas = [text[i : i + 4] for i in range(0, len(text), 4)]
    return stops, deltas


def per_token_us(fn, arg, deltas: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn(arg, deltas)
        times.append(time.process_time() - start)
    return statistics.median(times) / len(deltas) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(0)
    rows = []
    print(f"{'stop strings':>12} {'search us/token':>16} {'automaton us/token':>19} "
          f"{'ratio':>8} {'build ms':>9}")  # fmt: skip
    for count in COUNTS:
        stops, deltas = workload(count, rng)
        started = time.process_time()
        compiled = StopStrings(stops)
        build_ms = (time.process_time() - started) * 1e3
        searched = deltas if count < 10_000 else deltas[:100]
        search = per_token_us(previous_search, stops, searched, args.repeats)
        auto = per_token_us(automaton, compiled, deltas, args.repeats)
        row = {"stop_strings": count, "search_us_per_token": round(search, 2)}
        row |= {"automaton_us_per_token": round(auto, 2), "build_ms": round(build_ms, 1)}
        rows.append(row)
        print(f"{count:>12,} {search:>16,.2f} {auto:>19,.2f} {search / auto:>7.1f}x "
              f"{build_ms:>9,.1f}")  # fmt: skip
    load = os.getloadavg()
    print(f"load average {load}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "load": load}, indent=2) + "\n")


if __name__ == "__main__":
    main()
