"""Parameter counts and weight bytes, hand-computed from each published config."""

import pytest

from latlab.errors import ConfigError
from latlab.plan.catalog import get_catalog_model
from latlab.plan.weights import count_parameters, weight_bytes


def _count(name: str):
    return count_parameters(get_catalog_model(name).config)


# Per layer, hidden h, q width q, kv width k, intermediate i:
#   attention h*q + 2*h*k + q*h, gated MLP 3*h*i, RMSNorm weights 2*h (Gemma-2: 4*h).
# Embeddings vocab*h, plus an LM head of the same size unless tied, plus a final norm h.
EXPECTED_TOTALS = {
    # 128,256*4,096 = 525,336,576 (x2 untied); per layer 41,943,040 + 176,160,768 + 8,192
    # = 218,112,000; x32 = 6,979,584,000; + 1,050,673,152 + 4,096 = 8,030,261,248 (8.03B)
    "Llama-3.1-8B": 8_030_261_248,
    # embed 128,256*8,192 = 1,050,673,152 (x2); per layer 150,994,944 + 704,643,072 + 16,384
    # = 855,654,400; x80 = 68,452,352,000; + 2,101,346,304 + 8,192 = 70,553,706,496
    "Llama-3.1-70B": 70_553_706_496,
    # embed 152,064*3,584 = 544,997,376 (x2); per layer attention 29,360,128 + q/k/v biases
    # 3,584 + 2*512 = 4,608; MLP 203,685,888; norms 7,168 -> 233,057,792; x28 =
    # 6,525,618,176; + 1,089,994,752 + 3,584 = 7,615,616,512 (Qwen's published 7.61B)
    "Qwen2.5-7B": 7_615_616_512,
    # embed 152,064*8,192 = 1,245,708,288 (x2); per layer 150,994,944 + biases 10,240 + MLP
    # 726,663,168 + norms 16,384 = 877,684,736; x80 = 70,214,778,880; + 2,491,416,576 + 8,192
    "Qwen2.5-72B": 72_706_203_648,
    # embed 32,000*4,096 = 131,072,000 (x2); per layer 218,112,000 (as Llama-3.1-8B); x32
    # = 6,979,584,000; + 262,144,000 + 4,096 = 7,241,732,096
    "Mistral-7B-v0.1": 7_241_732_096,
    # tied embed 256,000*3,584 = 917,504,000; per layer q 3,584*4,096 + k,v 2*3,584*2,048
    # + o 4,096*3,584 = 44,040,192; MLP 154,140,672; 4 norms 14,336 -> 198,195,200; x42 =
    # 8,324,198,400; + 917,504,000 + 3,584 = 9,241,705,984
    "Gemma-2-9B": 9_241_705_984,
    # per layer attention 41,943,040 + 8 experts x 176,160,768 + router 4,096*8 + norms
    # 8,192 = 1,451,270,144; x32 = 46,440,644,608; + 262,144,000 + 4,096 = 46,702,792,704
    "Mixtral-8x7B": 46_702_792_704,
    # MLA attention per layer: q 2,048*3,072 + kv_a 2,048*576 + kv_a norm 512 + kv_b 512*4,096
    # + o 2,048*2,048 = 13,763,072; layer 0 dense MLP 3*2,048*10,944 = 67,239,936; layers
    # 1-26: 64 experts x 3*2,048*1,408 = 553,648,128 + shared 3*2,048*2,816 = 17,301,504 +
    # router 131,072; norms 4,096 per layer. 419,430,400 + (13,763,072 + 67,239,936 + 4,096)
    # + 26 x (13,763,072 + 571,080,704 + 4,096) + 2,048 = 15,706,484,224 (published 15.7B)
    "DeepSeek-V2-Lite": 15_706_484_224,
}


@pytest.mark.parametrize(("name", "expected"), EXPECTED_TOTALS.items())
def test_parameter_count_for_each_catalog_model(name, expected):
    assert _count(name).total == expected


def test_dense_models_use_every_parameter():
    breakdown = _count("Llama-3.1-8B")
    assert breakdown.active == breakdown.total


def test_mixtral_active_parameters_count_two_of_eight_experts():
    # non-expert 46,702,792,704 - 32 x 1,409,286,144 = 1,605,636,096; plus 2/8 of the
    # experts 45,097,156,608 / 4 = 11,274,289,152 -> 12,879,925,248 (Mistral's "12.9B")
    assert _count("Mixtral-8x7B").active == 12_879_925_248


def test_deepseek_v2_lite_groups():
    groups = _count("DeepSeek-V2-Lite").by_name()
    assert groups["mlp"] == 67_239_936  # first_k_dense_replace = 1 dense layer
    assert groups["routed_experts"] == 26 * 553_648_128
    assert groups["shared_experts"] == 26 * 17_301_504
    assert groups["router"] == 26 * 131_072


def test_tied_embeddings_have_no_lm_head():
    assert "lm_head" not in _count("Gemma-2-9B").by_name()
    assert "lm_head" in _count("Llama-3.1-8B").by_name()


def test_llama_attention_bias_flag_adds_biases():
    config = {**get_catalog_model("Llama-3.1-8B").config, "attention_bias": True}
    # q 4,096 + k,v 2 x 1,024 + o 4,096 per layer, 32 layers
    assert count_parameters(config).by_name()["attention_bias"] == 32 * 10_240


def test_bf16_and_fp32_bytes():
    breakdown = _count("Llama-3.1-8B")
    assert weight_bytes(breakdown, "bf16").total_bytes == 2 * 8_030_261_248
    assert weight_bytes(breakdown, "bfloat16").total_bytes == 2 * 8_030_261_248
    assert weight_bytes(breakdown, "fp32").total_bytes == 4 * 8_030_261_248


def test_int4_group_128_scale_overhead():
    breakdown = _count("Llama-3.1-8B")
    # linear params: attention 1,342,177,280 + MLP 5,637,144,576 = 6,979,321,856 at 0.5 B
    # = 3,489,660,928; scales: every in_features is a multiple of 128, so
    # 6,979,321,856 / 128 = 54,525,952 groups x 2 B = 109,051,904; embeddings, head and
    # norms stay bf16: 1,050,939,392 x 2 = 2,101,878,784.
    result = weight_bytes(breakdown, "int4")
    assert result.group_size == 128
    assert result.scale_bytes == 109_051_904
    assert result.total_bytes == 3_489_660_928 + 109_051_904 + 2_101_878_784  # 5,700,591,616


def test_int4_zero_points_add_half_a_byte_per_group():
    breakdown = _count("Llama-3.1-8B")
    plain = weight_bytes(breakdown, "int4", 128).total_bytes
    with_zero = weight_bytes(breakdown, "int4", 128, zero_point=True).total_bytes
    assert with_zero - plain == 54_525_952 // 2


def test_int8_per_channel_scales():
    breakdown = _count("Llama-3.1-8B")
    # output rows per layer: q 4,096 + k 1,024 + v 1,024 + o 4,096 + gate/up 2 x 14,336 +
    # down 4,096 = 43,008; x32 = 1,376,256 scales x 2 B = 2,752,512
    result = weight_bytes(breakdown, "int8")
    assert result.scale_bytes == 2_752_512
    assert result.total_bytes == 6_979_321_856 + 2_752_512 + 2_101_878_784


def test_tensor_parallel_shards_all_but_replicated_groups():
    breakdown = _count("Llama-3.1-8B")
    result = weight_bytes(breakdown, "bf16", tp=2)
    norms = 266_240 * 2  # (32 x 2 + 1) x 4,096 params, bf16, on every rank
    assert result.per_rank_bytes == (2 * 8_030_261_248 - norms) // 2 + norms


def test_bad_dtype_and_group_size():
    breakdown = _count("Llama-3.1-8B")
    with pytest.raises(ConfigError, match="int4"):
        weight_bytes(breakdown, "int3")
    with pytest.raises(ConfigError, match="group size"):
        weight_bytes(breakdown, "int4", group_size=0)


@pytest.mark.parametrize("field", ["vocab_size", "intermediate_size", "hidden_size"])
def test_missing_field_is_named(field):
    config = dict(get_catalog_model("Llama-3.1-8B").config)
    del config[field]
    with pytest.raises(ConfigError, match=field):
        count_parameters(config)


def test_mixtral_missing_expert_count_is_named():
    config = dict(get_catalog_model("Mixtral-8x7B").config)
    del config["num_experts_per_tok"]
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        count_parameters(config)


def test_unknown_model_type_is_counted_as_llama_with_a_note():
    config = {**get_catalog_model("Llama-3.1-8B").config, "model_type": "newthing"}
    breakdown = count_parameters(config)
    assert breakdown.total == 8_030_261_248
    assert "newthing" in breakdown.notes[0]
