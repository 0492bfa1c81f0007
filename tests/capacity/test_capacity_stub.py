"""Against a stub server that serves at most K requests at once, the search finds K for a TTFT
p99 objective between the no-queue TTFT (15 ms) and one full request time (90 ms)."""

from __future__ import annotations

import pytest

from latlab.bench import BenchConfig, OpenAITarget, run_bench
from latlab.capacity import CapacitySearch, SearchSpec
from latlab.testing import stub_process

# timing: p99s against a 60 ms objective; make test runs them without a parallel neighbour.
pytestmark = [pytest.mark.slow, pytest.mark.timing]

TTFT_S, ITL_S, TOKENS = 0.015, 0.0375, 3  # one request: 15 ms + 2 x 37.5 ms = 90 ms
# A request that waits for a slot waits about a full request (TTFT ~105 ms); the margin below
# the objective absorbs a loaded machine's scheduling noise (p99 +25 ms at load average 20).
SLO_TTFT_MS = 60.0


def find(url: str, **spec_kw) -> CapacitySearch:
    spec = SearchSpec(variable="concurrency", objectives={"ttft": SLO_TTFT_MS}, **spec_kw)
    search = CapacitySearch(spec=spec)
    config = BenchConfig(
        concurrency=[int(spec.start)],
        num_requests=spec.requests_for(spec.start),
        warmup=4,
        input_len="8",
        output_len=str(TOKENS),
    )
    run_bench(config, OpenAITarget(url), progress=False, plan=search.next_probe)
    return search


# k = 5 walks the whole search (doubling 2 -> 4 -> 8, then bisecting 6, 5); other k are the
# search unit tests' (tests/capacity/test_search.py), without a server.
@pytest.mark.parametrize("k", [5])
def test_finds_the_servers_concurrency_limit(k):
    with stub_process(ttft_s=TTFT_S, itl_s=ITL_S, max_concurrent=k) as url:
        search = find(url, start=2)
    assert search.status == "found", search.to_dict()
    assert search.answer == k and search.hi == k + 1
    at_k, beyond = search.probes[float(k)], search.probes[float(k + 1)]
    assert at_k.intervals["ttft"].high <= SLO_TTFT_MS < beyond.intervals["ttft"].low
    assert len(at_k.records) >= 500  # long enough for a p99


def test_an_slo_below_the_no_queue_ttft_is_met_by_no_level():
    with stub_process(ttft_s=TTFT_S, itl_s=ITL_S, max_concurrent=2) as url:
        spec = SearchSpec(variable="concurrency", objectives={"ttft": 5.0}, percentile=90)
        search = CapacitySearch(spec=spec)
        config = BenchConfig(
            concurrency=[1], num_requests=50, warmup=2, input_len="8", output_len=str(TOKENS)
        )
        run_bench(config, OpenAITarget(url), progress=False, plan=search.next_probe)
    assert search.status == "none" and search.order == [1.0]
    assert search.best_probe().intervals["ttft"].estimate > 5.0
