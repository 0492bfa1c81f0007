"""The search logic against a modelled server: bracketing, bisection, tolerance, and the
answers it must give instead of guessing (none meets, above the range, undetermined)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from latlab.capacity import CapacitySearch, SearchSpec, judge
from latlab.errors import ConfigError
from latlab.metrics import SLO, RequestRecord, summarize

MS = 1_000_000


def level(ttfts_ms: list[float], failed: int = 0) -> SimpleNamespace:
    """A measured level: records with these TTFTs (plus failures) and its summary."""
    records = []
    for i, ttft in enumerate(ttfts_ms):
        start = i * 10 * MS
        first = start + int(ttft * MS)
        records.append(
            RequestRecord(
                request_id=str(i),
                send_ns=start,
                chunk_ns=[first, first + MS],
                chunk_tokens=[1, 1],
                end_ns=first + MS,
                output_tokens=2,
            )
        )
    records += [
        RequestRecord(request_id=f"f{i}", send_ns=0, end_ns=MS, error="http_500")
        for i in range(failed)
    ]
    return SimpleNamespace(records=records, summary=summarize(records))


def run(search: CapacitySearch, ttft_at, noise: float = 1.0, seed: int = 0) -> list[float]:
    """Drive the search with a server whose TTFTs at load v are ttft_at(v) plus jitter."""
    rng = random.Random(seed)
    step, last = search.next_probe(None), None
    while step is not None:
        load, count = step
        v = next(iter(load.values()))
        last = level([ttft_at(v) + rng.uniform(0, noise) for _ in range(count)])
        step = search.next_probe(last)
    return search.order


def knee(k: float):
    """No queue up to k users; beyond it every request waits a full request time."""
    return lambda v: 50.0 if v <= k else 170.0


def spec(**kw) -> SearchSpec:
    return SearchSpec(**{"variable": "concurrency", "objectives": {"ttft": 100.0}, **kw})


@pytest.mark.parametrize("k", [1, 3, 5, 12, 100])
def test_brackets_by_doubling_then_bisects_to_k(k):
    search = CapacitySearch(spec=spec())
    order = run(search, knee(k))
    assert search.status == "found" and search.answer <= k < search.hi
    if k <= 10:
        assert search.answer == k  # a bracket of one user: exact
    doubling = [v for v in order if v in (1, 2, 4, 8, 16, 32, 64, 128)]
    assert order[: len(doubling)] == doubling  # doubling first
    assert search.hi - search.lo <= max(1, 0.1 * search.lo)
    assert all(search.probes[v].records and len(search.probes[v].records) >= 500 for v in order)


def test_rate_search_stops_within_the_tolerance():
    search = CapacitySearch(spec=spec(variable="rate", tolerance=0.05))
    run(search, lambda r: 50.0 if r <= 37.5 else 170.0)
    assert search.status == "found" and 37.5 * 0.95 <= search.answer <= 37.5
    assert (search.hi - search.lo) / search.lo <= 0.05


def test_no_load_meets_the_slo_says_so_and_names_the_closest():
    search = CapacitySearch(spec=spec())
    run(search, lambda v: 150.0 + v)
    assert search.status == "none" and search.answer is None
    assert search.best_probe().value == 1.0 and search.order == [1.0]


def test_a_server_faster_than_the_range_is_reported_as_above_it():
    search = CapacitySearch(spec=spec(limit=16))
    run(search, knee(1000))
    assert search.status == "above-limit" and search.answer == 16


def test_an_interval_that_straddles_the_slo_is_remeasured_then_called_undetermined():
    search = CapacitySearch(spec=spec())
    # from 4 users on, the p99 sits right at the objective (99 + 0.99 x 1.0101 = 100 ms)
    order = run(search, lambda v: 50.0 if v < 4 else 99.0, noise=1.0101)
    assert search.status == "undetermined" and search.answer == 2
    probe = search.probes[4.0]
    assert probe.measured == 3 and len(probe.records) == 500 + 1000 + 2000
    assert order == [1.0, 2.0, 4.0]


def test_failed_requests_count_against_the_slo():
    ok = level([50.0] * 495, failed=0)
    bad = level([50.0] * 475, failed=25)  # 5% failed: far beyond what a p99 allows
    slo_spec = spec()
    assert judge(ok.records, slo_spec)[1] == {"ttft": "meets"}
    assert judge(bad.records, slo_spec)[1] == {"ttft": "fails"}


def test_goodput_is_kept_per_probe_with_an_slo():
    search = CapacitySearch(spec=spec(), slo=SLO(ttft_ms=100))
    run(search, knee(3))
    assert search.probes[3.0].goodput_rps > 0
    assert search.to_dict()["goodput_rps_at_answer"] == search.probes[3.0].goodput_rps


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variable": "tokens"}, "max-concurrency or max-rate"),
        ({"objectives": {}}, "needs an objective"),
        ({"percentile": 100}, "--slo-percentile"),
        ({"start": 8, "limit": 4}, "--find-start"),
        ({"tolerance": 0}, "--find-tolerance"),
    ],
)
def test_bad_specs_say_what_to_do(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        spec(**kwargs)
