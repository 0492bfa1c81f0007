"""EngineTarget against latlab's real AsyncLLM on a tiny random model (CPU)."""

import pytest

from latlab.bench import BenchConfig, EngineTarget, run_bench

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from latlab.testing.random_model import save_random_llama

    return save_random_llama(tmp_path_factory.mktemp("tiny-engine") / "m")


def test_engine_target_streams_exact_lengths_under_concurrency(tiny_model):
    pytest.importorskip("latlab.engine")
    target = EngineTarget.from_model(str(tiny_model), dtype="float32")
    config = BenchConfig(concurrency=[1, 4], num_requests=4, warmup=1, input_len="10",
                         output_len="8")  # fmt: skip
    res = run_bench(config, target, False)
    for lv in res.levels:
        s = lv.summary
        assert (s.completed, s.failed) == (4, 0), s.errors
        assert s.output_tokens == 32
        assert s.output_tokens_source == {"engine": 4}
        assert s.ttft_ms.p50 > 0
        assert all(r.prompt_tokens >= 10 for r in lv.records)


def test_the_capacity_search_drives_the_in_process_engine_in_open_loop(tiny_model):
    """--find works against every target: here max-rate on the engine itself, an objective it
    meets at every rate tried, so the search doubles to its limit and says so."""
    pytest.importorskip("latlab.engine")
    from latlab.capacity import CapacitySearch, SearchSpec

    target = EngineTarget.from_model(str(tiny_model), dtype="float32")
    spec = SearchSpec(variable="rate", objectives={"e2e": 60_000.0}, percentile=50, start=8,
                      limit=16)  # fmt: skip
    search = CapacitySearch(spec=spec)
    config = BenchConfig(rate=[8.0], num_requests=spec.requests_for(8), warmup=1,
                         input_len="10", output_len="4")  # fmt: skip
    run_bench(config, target, False, plan=search.next_probe)
    assert search.status == "above-limit", search.to_dict()
    assert search.order == [8.0, 16.0]
    assert all(p.verdicts == {"e2e": "meets"} for p in search.probes.values())
