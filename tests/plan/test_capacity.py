"""Budget, blocks, concurrency and longest context, with figures worked by hand."""

import pytest

from latlab.errors import CapacityError, ConfigError
from latlab.plan.capacity import compute_capacity, kv_budget_bytes
from latlab.plan.catalog import get_catalog_model

GIB = 2**30


def _config(name: str) -> dict:
    return get_catalog_model(name).config


def test_one_gib_of_llama_8b_cache():
    # block = 16 x 131,072 B = 2 MiB; 1 GiB / 2 MiB = 512 blocks = 8,192 tokens
    cap = compute_capacity(_config("Llama-3.1-8B"), GIB, block_size=16, context=8192)
    assert (cap.num_blocks, cap.kv_tokens) == (512, 8192)
    assert cap.kv_bytes_per_sequence == GIB
    assert cap.max_concurrency == 1


def test_concurrency_at_a_context_counts_whole_blocks():
    # 1,000 tokens -> 63 blocks; 512 // 63 = 8 sequences (not 8,192 / 1,000 = 8.19)
    cap = compute_capacity(_config("Llama-3.1-8B"), GIB, context=1000)
    assert cap.max_concurrency == 8
    # 1,008 tokens also takes 63 blocks; 1,009 takes 64 -> 512 // 64 = 8 as well
    assert compute_capacity(_config("Llama-3.1-8B"), GIB, context=1024).max_concurrency == 8
    assert compute_capacity(_config("Llama-3.1-8B"), GIB, context=1025).max_concurrency == 7


def test_largest_context_for_a_concurrency():
    # 4 sequences share 512 blocks: 128 blocks each = 2,048 tokens
    cap = compute_capacity(_config("Llama-3.1-8B"), GIB, concurrency=4)
    assert cap.max_context == 2048
    assert cap.max_context_limited_by == "memory"


def test_context_is_capped_by_the_model_when_memory_allows_more():
    # 8 GiB of Mistral cache; with every layer windowed, one sequence never holds more than
    # 257 blocks (514 MiB), so the model's 32,768 limit binds first.
    cap = compute_capacity(_config("Mistral-7B-v0.1"), 8 * GIB, concurrency=1)
    assert cap.max_context == 32_768
    assert cap.max_context_limited_by == "model"


def test_sliding_window_lets_more_sequences_fit():
    mistral = compute_capacity(_config("Mistral-7B-v0.1"), 8 * GIB, context=32_768)
    mixtral = compute_capacity(_config("Mixtral-8x7B"), 8 * GIB, context=32_768)
    # same bytes per token; Mistral keeps 257 blocks per sequence, Mixtral 2,048
    # 8 GiB / 2 MiB = 4,096 blocks -> 4,096 // 257 = 15 and 4,096 // 2,048 = 2
    assert (mistral.max_concurrency, mixtral.max_concurrency) == (15, 2)


def test_gemma2_hybrid_sequence_bytes():
    # 8,192 tokens: 16,149 layer-blocks x 16 x 8,192 B = 2,116,681,728 B per sequence
    cap = compute_capacity(_config("Gemma-2-9B"), 10 * GIB, context=8192)
    assert cap.kv_bytes_per_sequence == 2_116_681_728
    assert cap.max_concurrency == 10 * GIB // 2_116_681_728  # 5


def test_fp8_cache_doubles_the_tokens():
    bf16 = compute_capacity(_config("Llama-3.1-8B"), GIB)
    fp8 = compute_capacity(_config("Llama-3.1-8B"), GIB, kv_dtype="fp8")
    assert fp8.kv_tokens == 2 * bf16.kv_tokens == 16_384


def test_block_size_changes_rounding_not_the_total():
    cap = compute_capacity(_config("Llama-3.1-8B"), GIB, block_size=32)
    assert (cap.num_blocks, cap.kv_tokens) == (256, 8192)
    # 1 GiB + 3 MiB: 4 MiB blocks leave 3 MiB unused (256 blocks, 8,192 tokens); 2 MiB
    # blocks use 2 of the 3 (513 blocks, 8,208 tokens)
    budget = GIB + 3 * 2**20
    assert compute_capacity(_config("Llama-3.1-8B"), budget, block_size=32).kv_tokens == 8192
    assert compute_capacity(_config("Llama-3.1-8B"), budget, block_size=16).kv_tokens == 8208


def test_context_that_does_not_fit_once_says_so_and_gives_the_longest():
    with pytest.raises(CapacityError, match="does not fit even once") as exc:
        compute_capacity(_config("Llama-3.1-8B"), GIB, context=8193)
    assert "8,192 tokens" in str(exc.value)


def test_concurrency_that_cannot_fit_one_token_each():
    with pytest.raises(CapacityError, match="even at 1 token"):
        compute_capacity(_config("Llama-3.1-8B"), GIB, concurrency=513)
    assert compute_capacity(_config("Llama-3.1-8B"), GIB, concurrency=512).max_context == 16


def test_budget_from_device_memory():
    # H100 85,520,809,984 B x 0.9 - 16,060,522,496 (8B bf16 weights) - 2 GiB reserve
    budget = kv_budget_bytes(85_520_809_984, 0.9, 16_060_522_496, 2 * GIB)
    assert budget == 76_968_728_985 - 16_060_522_496 - 2_147_483_648  # 58,760,722,841
    assert compute_capacity(_config("Llama-3.1-8B"), budget).num_blocks == 28_019


def test_weights_that_do_not_fit_say_so():
    with pytest.raises(CapacityError, match="do not leave room"):
        kv_budget_bytes(24 * GIB, 0.9, 141 * GIB, 2 * GIB)


@pytest.mark.parametrize("utilization", [0, -0.1, 1.5])
def test_bad_utilization(utilization):
    with pytest.raises(ConfigError, match="utilization"):
        kv_budget_bytes(24 * GIB, utilization, GIB, 0)


def test_bad_context_and_concurrency():
    with pytest.raises(ConfigError, match="context"):
        compute_capacity(_config("Llama-3.1-8B"), GIB, context=0)
    with pytest.raises(ConfigError, match="concurrency"):
        compute_capacity(_config("Llama-3.1-8B"), GIB, concurrency=0)
