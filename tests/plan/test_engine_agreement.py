"""Our engine's KV block count is the planner's, for the same model and byte budget."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from latlab.plan import plan_memory


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from latlab.testing.random_model import TINY_TEST, save_random_llama

    return save_random_llama(tmp_path_factory.mktemp("tiny"), TINY_TEST, dtype="float32")


@pytest.mark.parametrize(("budget", "block_size"), [(1 << 20, 16), (3_000_000, 16), (1 << 20, 7)])
def test_engine_blocks_equal_planned_blocks(tiny_model_dir, budget, block_size):
    from latlab import LLM

    # TINY_TEST: 2 layers x 2 KV heads x (64 / 4 = 16) x 2 x 4 B (fp32) = 512 B per token
    plan = plan_memory(
        tiny_model_dir, kv_cache_bytes=budget, kv_dtype="fp32", block_size=block_size
    )
    assert plan.kv_bytes_per_token == 512
    llm = LLM(
        model=str(tiny_model_dir),
        dtype="float32",
        kv_cache_bytes=budget,
        block_size=block_size,
        max_model_len=64,
    )
    assert llm.engine.stats().num_kv_blocks == plan.num_blocks == budget // (block_size * 512)
