"""plan_memory end to end: one record with every figure, and its explanation."""

import json

import pytest

import latlab
from latlab.errors import CapacityError, ConfigError
from latlab.plan import MemoryPlan, explain_plan, plan_memory


def test_public_export():
    assert latlab.plan_memory is plan_memory


def test_model_only_plan_has_no_capacity():
    plan = plan_memory("Llama-3.1-8B")
    assert isinstance(plan, MemoryPlan)
    assert plan.params_total == 8_030_261_248
    assert plan.weight_bytes == 16_060_522_496
    assert plan.kv_bytes_per_token == 131_072
    assert plan.kv_bytes_per_block == 16 * 131_072
    assert plan.kv_budget_bytes is None and plan.num_blocks is None
    assert plan.attention == "GQA"


def test_context_without_a_device_still_gives_sequence_bytes():
    plan = plan_memory("Llama-3.1-8B", context=8192)
    assert plan.kv_bytes_per_sequence == 2**30  # 8,192 x 128 KiB


def test_h100_plan_for_llama_8b():
    plan = plan_memory("Llama-3.1-8B", device="H100-80GB", context=8192, concurrency=16)
    # (int(85,520,809,984 x 0.9) - 16,060,522,496 - 2 GiB) // 2 MiB = 28,019 blocks
    assert plan.kv_budget_bytes == 58_760_722_841
    assert plan.num_blocks == 28_019
    assert plan.kv_tokens == 448_304
    assert plan.max_concurrency == 54  # 58,760,722,841 // 1 GiB
    # 16 sequences: 28,019 // 16 = 1,751 blocks each = 28,016 tokens
    assert plan.max_context == 28_016


def test_memory_flag_and_reserve():
    plan = plan_memory("Llama-3.1-8B", memory="24GiB", reserve="1GiB", gpu_memory_utilization=1)
    assert plan.kv_budget_bytes == 24 * 2**30 - 16_060_522_496 - 2**30
    assert plan.device == "custom"


def test_kv_cache_bytes_is_the_budget():
    plan = plan_memory("Llama-3.1-8B", kv_cache_bytes="1GiB")
    assert (plan.num_blocks, plan.kv_tokens) == (512, 8192)
    assert plan.memory_bytes is None


def test_tp_and_kv_dtype_auto():
    plan = plan_memory("Llama-3.1-70B", device="H100-80GB", tp=4, weight_dtype="fp8")
    assert plan.kv_dtype == "bf16"  # auto with quantized weights caches in bf16
    assert plan.kv_heads_per_rank == 2
    assert plan.kv_bytes_per_token == 80 * 2 * 128 * 2 * 2
    assert plan.weight_bytes_per_rank < plan.weight_bytes / 3.9
    fp32 = plan_memory("Llama-3.1-8B", weight_dtype="fp32")
    assert fp32.kv_dtype == "fp32"


def test_mla_plan():
    plan = plan_memory("DeepSeek-V2-Lite", kv_cache_bytes="1GiB", context=4096)
    assert plan.attention == "MLA"
    assert plan.kv_latent_dim == 576
    assert plan.kv_bytes_per_token == 31_104
    # 1 GiB // (16 x 31,104) = 2,157 blocks; 4,096 tokens = 256 blocks -> 8 sequences
    assert plan.num_blocks == 2_157
    assert plan.max_concurrency == 8


def test_to_dict_is_json_and_leaves_the_config_out():
    data = plan_memory("Gemma-2-9B", device="L40S-48GB", context=4096).to_dict()
    json.dumps(data)
    assert "config" not in data
    assert data["sliding_layers"] == 21
    assert data["sliding_window"] == 4096


def test_explain_fills_in_the_numbers():
    text = "\n".join(explain_plan(plan_memory("Llama-3.1-8B", device="H100-80GB", context=8192)))
    assert "2 (K,V) x 8 KV heads x 128 head_dim x 2 B = 4,096 B" in text
    assert "32 layers x 4,096 B = 131,072 B (128.00 KiB)" in text
    assert "58,760,722,841 // 2,097,152 B = 28,019 blocks" in text
    assert "ceil(8,192 / 16) = 512 blocks" in text


def test_explain_mla_sliding_and_quantized_weights():
    mla = "\n".join(explain_plan(plan_memory("DeepSeek-V2-Lite", weight_dtype="int4")))
    assert "(kv_lora_rank 512 + qk_rope_head_dim 64) x 2 B" in mla
    assert "per 128 inputs" in mla
    gemma = "\n".join(explain_plan(plan_memory("Gemma-2-9B", kv_cache_bytes="10GiB", context=8192)))
    assert "21 of 42 layers keep at most the last 4,096 tokens" in gemma
    assert "lm_head" in gemma and "tied" in gemma


def test_impossible_context_says_so():
    with pytest.raises(CapacityError, match="does not fit even once"):
        plan_memory("Llama-3.1-8B", memory="24GiB", context=1_000_000)


def test_weights_larger_than_the_device():
    with pytest.raises(CapacityError, match="do not leave room"):
        plan_memory("Llama-3.1-70B", device="L4-24GB")


def test_context_beyond_the_model_limit_is_a_warning():
    plan = plan_memory("Gemma-2-9B", kv_cache_bytes="40GiB", context=16384)
    assert any("max_position_embeddings" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "H100-80GB", "memory": "80GB"}, "not both"),
        ({"kv_cache_bytes": "1GiB", "device": "H100-80GB"}, "not both"),
        ({"tp": 3}, "tensor parallel"),
        ({"block_size": 0}, "block size"),
        ({"weight_dtype": "int2"}, "weight dtype"),
        ({"kv_dtype": "int2"}, "KV dtype"),
        ({"kv_scales": "row"}, "scale"),
        ({"memory": "lots"}, "memory size"),
        ({"context": 0}, "context"),
        ({"concurrency": -1}, "concurrency"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        plan_memory("Llama-3.1-8B", **kwargs)


def test_plan_imports_without_torch():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "transformers", "numpy"}:
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, _Block())
        from latlab.plan import plan_memory
        import latlab.cli.plan
        print(plan_memory("Llama-3.1-8B").kv_bytes_per_token)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "131072"
