"""The in-process transformers target on a tiny random model (CPU)."""

import pytest

from latlab.bench import BenchConfig, TransformersTarget, run_bench

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from latlab.testing.random_model import save_random_llama

    return save_random_llama(tmp_path_factory.mktemp("tiny") / "m")


def test_streams_token_by_token_with_exact_lengths(tiny_model):
    target = TransformersTarget(str(tiny_model))
    config = BenchConfig(concurrency=[1, 2], num_requests=3, warmup=1, input_len="12",
                         output_len="6")  # fmt: skip
    res = run_bench(config, target, False)
    for lv in res.levels:
        s = lv.summary
        assert s.completed == 3 and s.failed == 0
        assert s.tokens_per_chunk == {1: 18}
        assert s.output_tokens_source == {"engine": 3}
        assert all(r.prompt_tokens >= 12 for r in lv.records)
        assert s.ttft_ms.p50 > 0 and s.itl_ms.count == 15


def test_from_loaded_and_sampling(tiny_model):
    from latlab.model_files import load_causal_lm, load_tokenizer

    target = TransformersTarget.from_loaded(
        load_causal_lm(str(tiny_model)), load_tokenizer(str(tiny_model)), name="mine"
    )
    config = BenchConfig(num_requests=2, warmup=0, input_len="4", output_len="5",
                         temperature=0.8)  # fmt: skip
    res = run_bench(config, target, False)
    assert res.target["name"] == "mine"
    assert res.levels[0].summary.output_tokens == 10
