"""Against ``latlab serve`` (the bundled model, its own process): the search finds a frontier
for a TTFT p90 objective, and a sweep of levels around it confirms it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from latlab.bench import BenchConfig, OpenAITarget, run_bench
from latlab.capacity import CapacitySearch, SearchSpec
from latlab.procs import ManagedProcess, ProcessSpec, free_port

pytest.importorskip("fastapi")
pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.timing]  # a frontier of TTFT percentiles

WORKLOAD = {"input_len": "32", "output_len": "8", "warmup": 4}


@pytest.fixture(scope="module")
def serve_url():
    port = free_port()
    latlab = Path(sys.executable).with_name("latlab")
    spec = ProcessSpec(argv=[str(latlab), "serve", "--port", str(port)], name="latlab serve")
    with ManagedProcess(spec) as proc:
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=180)
        yield f"http://127.0.0.1:{port}/v1"


def p90_ttft(url: str, concurrency: int, requests: int) -> float:
    config = BenchConfig(concurrency=[concurrency], num_requests=requests, **WORKLOAD)
    return run_bench(config, OpenAITarget(url), progress=False).levels[0].summary.ttft_ms.p90


def test_a_frontier_the_sweep_confirms(serve_url):
    # The objective: four times the unloaded TTFT, so the frontier lies inside the range.
    slo_ms = max(4 * p90_ttft(serve_url, 1, 40), 20.0)
    spec = SearchSpec(
        variable="concurrency", objectives={"ttft": slo_ms}, percentile=90, limit=64, tolerance=0.25
    )
    search = CapacitySearch(spec=spec)
    config = BenchConfig(concurrency=[1], num_requests=spec.requests_for(1), **WORKLOAD)
    run_bench(config, OpenAITarget(serve_url), progress=False, plan=search.next_probe)
    # "undetermined" is a frontier too: the load whose p90 interval still straddles the SLO
    # after two re-measures is where the TTFT crosses it, to within the machine's noise (CI saw
    # this once on a 2-core runner). Anything else (none, above-limit) is a wrong answer.
    assert search.status in ("found", "undetermined"), search.to_dict()
    assert search.answer is not None, search.to_dict()
    answer = int(search.answer)
    frontier = int(search.hi if search.status == "found" else search.last_probed)
    # A quarter of the answer, not half: on a shared 2-core machine the TTFT at one level moves
    # by a third from one minute to the next (seen: 240 ms objective, 320 ms at answer / 2).
    below, beyond = max(1, answer // 4), 2 * frontier
    sweep = {c: p90_ttft(serve_url, c, max(80, 8 * c)) for c in (below, beyond)}
    assert sweep[below] <= slo_ms < sweep[beyond], (slo_ms, answer, frontier, sweep)
