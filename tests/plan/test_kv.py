"""KV bytes per token, per sequence, blocks and windows, against hand-computed figures."""

import pytest

from latlab.errors import ConfigError
from latlab.plan.catalog import get_catalog_model
from latlab.plan.kv import (
    blocks_for_tokens,
    check_tensor_parallel,
    kv_bytes_per_sequence,
    kv_bytes_per_token,
    kv_bytes_per_token_layer,
    layer_blocks_for_context,
    layer_windows,
    num_blocks,
    round_up_to_block,
)


def _config(name: str) -> dict:
    return get_catalog_model(name).config


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # layers x KV heads x head_dim x 2 (K,V) x 2 bytes (bf16)
        ("Llama-3.1-8B", 32 * 8 * 128 * 2 * 2),  # 131,072
        ("Llama-3.1-70B", 80 * 8 * 128 * 2 * 2),  # 327,680
        ("Qwen2.5-7B", 28 * 4 * 128 * 2 * 2),  # head_dim 3584 / 28 = 128 -> 57,344
        ("Qwen2.5-72B", 80 * 8 * 128 * 2 * 2),  # 327,680
        ("Mistral-7B-v0.1", 32 * 8 * 128 * 2 * 2),  # 131,072 (window caps tokens, not this)
        ("Gemma-2-9B", 42 * 8 * 256 * 2 * 2),  # head_dim 256 from config -> 344,064
        ("Mixtral-8x7B", 32 * 8 * 128 * 2 * 2),  # experts do not touch the cache -> 131,072
        # MLA: layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes, no K/V factor
        ("DeepSeek-V2-Lite", 27 * (512 + 64) * 2),  # 31,104
    ],
)
def test_bf16_bytes_per_token_for_each_catalog_model(name, expected):
    assert kv_bytes_per_token(_config(name), "bf16") == expected


def test_llama_8b_is_128_kib_not_the_hidden_size_estimate():
    config = _config("Llama-3.1-8B")
    assert kv_bytes_per_token(config) == 131_072 == 128 * 1024
    # The common hidden_size-based estimate: 2 x 32 x 4096 x 2 = 512 KiB, 4x too much.
    assert 4 * kv_bytes_per_token(config) == 2 * 32 * 4096 * 2


def test_kv_dtypes_scale_the_element_size():
    config = _config("Llama-3.1-8B")
    assert kv_bytes_per_token(config, "fp32") == 262_144
    assert kv_bytes_per_token(config, "float32") == 262_144  # torch-style name (the engine's)
    assert kv_bytes_per_token(config, "fp16") == 131_072
    assert kv_bytes_per_token(config, "fp8") == 65_536  # 32 x 8 x 128 x 2 x 1
    assert kv_bytes_per_token(config, "fp8_e4m3") == 65_536
    assert kv_bytes_per_token(config, "int4") == 32_768  # 0.5 byte per element


def test_fp8_cache_with_per_tensor_scales_has_no_per_token_overhead():
    config = _config("Llama-3.1-8B")
    assert kv_bytes_per_token(config, "fp8", kv_scales="tensor") == 65_536


def test_int8_cache_with_per_token_head_scales_adds_scale_and_zero_bytes():
    config = _config("Llama-3.1-8B")
    # per layer: 2 x 8 heads x 128 x 1 B = 2,048 + 2 x 8 heads x (2 B scale + 2 B zero) = 64
    assert kv_bytes_per_token_layer(config, "int8", kv_scales="token-head") == 2_112
    assert kv_bytes_per_token(config, "int8", kv_scales="token-head") == 32 * 2_112  # 67,584


def test_token_head_scales_do_nothing_for_unquantized_caches():
    config = _config("Llama-3.1-8B")
    assert kv_bytes_per_token(config, "bf16", kv_scales="token-head") == 131_072


def test_mla_scales_count_one_latent_per_layer():
    config = _config("DeepSeek-V2-Lite")
    # (512 + 64) x 1 B + one latent x 4 B = 580 per layer
    assert kv_bytes_per_token(config, "fp8", kv_scales="token-head") == 27 * 580


def test_tensor_parallel_splits_kv_heads_but_never_below_one():
    config = _config("Llama-3.1-70B")
    assert kv_bytes_per_token(config, "bf16", tp=4) == 80 * 2 * 128 * 2 * 2  # 2 heads per rank
    assert kv_bytes_per_token(config, "bf16", tp=8) == 80 * 1 * 128 * 2 * 2
    # 16 ranks, 8 KV heads: each rank still holds one (replicated) head.
    assert kv_bytes_per_token(config, "bf16", tp=16) == 80 * 1 * 128 * 2 * 2  # 40,960


def test_mla_latent_is_not_split_by_tensor_parallel():
    config = _config("DeepSeek-V2-Lite")
    assert kv_bytes_per_token(config, "bf16", tp=2) == 31_104


def test_tensor_parallel_must_divide_the_heads():
    config = _config("Llama-3.1-8B")
    check_tensor_parallel(config, 8)
    with pytest.raises(ConfigError, match="num_attention_heads"):
        check_tensor_parallel(config, 3)
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        # 32 heads split 4 ways is fine, but 6 KV heads and 4 ranks divide neither way
        check_tensor_parallel({**config, "num_key_value_heads": 6}, 4)


def test_head_dim_falls_back_to_hidden_over_heads_and_kv_heads_to_heads():
    config = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}
    # MHA: 2 layers x 4 heads x 16 x 2 x 4 B (fp32)
    assert kv_bytes_per_token(config, "fp32") == 2 * 4 * 16 * 2 * 4


@pytest.mark.parametrize("field", ["num_hidden_layers", "num_attention_heads", "hidden_size"])
def test_missing_field_is_named(field):
    config = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}
    del config[field]
    with pytest.raises(ConfigError, match=field):
        kv_bytes_per_token(config)


def test_mla_missing_rope_dim_is_named():
    with pytest.raises(ConfigError, match="qk_rope_head_dim"):
        kv_bytes_per_token({"num_hidden_layers": 2, "kv_lora_rank": 512})


def test_unknown_kv_dtype_lists_choices():
    with pytest.raises(ConfigError, match="bf16"):
        kv_bytes_per_token(_config("Llama-3.1-8B"), "fp6")


def test_block_rounding_helpers():
    assert blocks_for_tokens(0, 16) == 0
    assert blocks_for_tokens(1, 16) == 1
    assert blocks_for_tokens(16, 16) == 1
    assert blocks_for_tokens(17, 16) == 2
    assert round_up_to_block(17, 16) == 32
    assert round_up_to_block(1000, 16) == 1008
    # 1 GiB // (16 tokens x 131,072 B) = 1,073,741,824 // 2,097,152 = 512 blocks
    assert num_blocks(2**30, 16, 131_072) == 512
    assert num_blocks(2**30 - 1, 16, 131_072) == 511
    with pytest.raises(ConfigError, match="block size"):
        blocks_for_tokens(5, 0)


def test_sequence_bytes_round_up_to_whole_blocks():
    config = _config("Llama-3.1-8B")
    # 1,000 tokens -> ceil(1000 / 16) = 63 blocks = 1,008 token slots x 131,072 B
    assert kv_bytes_per_sequence(config, 1000, block_size=16) == 1008 * 131_072
    assert kv_bytes_per_sequence(config, 1000, block_size=1) == 1000 * 131_072


def test_mistral_sliding_window_caps_every_layer():
    config = _config("Mistral-7B-v0.1")
    assert layer_windows(config) == [4096] * 32
    # exact: min(10,000, 4,096) tokens per layer
    assert kv_bytes_per_sequence(config, 10_000, block_size=1) == 4096 * 131_072
    # paged: min(ceil(10000/16) = 625, ceil(4095/16) + 1 = 257) blocks = 4,112 slots
    assert kv_bytes_per_sequence(config, 10_000, block_size=16) == 4112 * 131_072
    # shorter than the window: the window does not matter (ceil(100/16) = 7 blocks)
    assert kv_bytes_per_sequence(config, 100, block_size=16) == 112 * 131_072


def test_gemma2_alternates_sliding_and_global_layers():
    config = _config("Gemma-2-9B")
    windows = layer_windows(config)
    assert windows[:4] == [4096, None, 4096, None]
    assert windows.count(4096) == 21 and windows.count(None) == 21
    # 8,192 tokens: 21 global layers x 512 blocks + 21 sliding x 257 blocks = 16,149 blocks
    # per layer bytes: 2 x 8 x 256 x 2 = 8,192
    assert kv_bytes_per_sequence(config, 8192, block_size=16) == 16_149 * 16 * 8_192


def test_layer_blocks_for_context():
    assert layer_blocks_for_context(8192, None, 16) == 512
    assert layer_blocks_for_context(8192, 4096, 16) == 257
    assert layer_blocks_for_context(100, 4096, 16) == 7


def test_qwen2_sliding_window_only_when_enabled_and_from_max_window_layers():
    config = _config("Qwen2.5-7B")
    assert layer_windows(config) == [None] * 28  # use_sliding_window is false
    enabled = {**config, "use_sliding_window": True, "sliding_window": 4096}
    enabled["max_window_layers"] = 20
    assert layer_windows(enabled) == [None] * 20 + [4096] * 8


def test_explicit_layer_types_win():
    config = {
        "num_hidden_layers": 3,
        "sliding_window": 512,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
    }
    assert layer_windows(config) == [512, None, 512]
    with pytest.raises(ConfigError, match="layer_types"):
        layer_windows({**config, "num_hidden_layers": 4})


def test_mixtral_null_window_means_full_attention():
    assert layer_windows(_config("Mixtral-8x7B")) == [None] * 32
