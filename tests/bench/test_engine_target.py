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
