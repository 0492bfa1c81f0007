"""``latlab plan --backend vllm``: the flags a plan implies and the capacity vLLM will log.

The capacities asserted here are the ones real vLLM CPU 0.32.0 launches logged on this machine
(tests/deploy/fixtures/vllm-0.32.0-cpu-serve.log for the bundled model at 1 GiB; 58,240 tokens
for the ~106M reference model at 1 GiB, docs/plan.md); the live check that vLLM accepts the
flags is tests/deploy/test_vllm_live.py.
"""

from __future__ import annotations

import json
import shlex

import pytest
from click.testing import CliRunner

from latlab.assets import bundled_model_path
from latlab.cli import _register_commands, main
from latlab.errors import CapacityError, ConfigError
from latlab.plan.vllm import logged_kv_tokens, plan_vllm, stage_config

REF_106M = {"model_type": "llama", "hidden_size": 768, "intermediate_size": 3072,
            "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 6,
            "vocab_size": 4096, "max_position_embeddings": 2048}  # fmt: skip


def test_cpu_plan_for_the_bundled_model_predicts_what_vllm_logged() -> None:
    plan = plan_vllm(bundled_model_path(), device="cpu", kv_cache_bytes="1GiB", context=2048)
    assert plan.platform == "cpu" and plan.block_size == 128
    assert plan.kv_cache_tokens == 1_048_576  # vLLM CPU 0.32.0 logged 1,048,576 tokens
    assert plan.flags == {
        "max_model_len": 2048,
        "dtype": "bfloat16",
        "kv_cache_memory_bytes": 2**30,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 2048,
    }
    assert plan.command_line("M").startswith("env -u VLLM_CPU_KVCACHE_SPACE vllm serve M ")


def test_cpu_plan_for_the_reference_model_rounds_to_vllm_blocks() -> None:
    plan = plan_vllm(REF_106M, device="cpu", kv_cache_bytes="1GiB", context=2048)
    assert (plan.num_blocks, plan.kv_cache_tokens) == (455, 58_240)  # what vLLM logged


def test_logged_capacity_follows_vllms_formula_for_odd_lengths() -> None:
    assert logged_kv_tokens(455, 128, 2048) == 58_240
    # 2,000 tokens need 16 blocks of 128: 455 / 16 full requests of 2,000 tokens
    assert logged_kv_tokens(455, 128, 2000) == int(455 / 16 * 2000)


def test_smallest_tensor_parallel_that_fits_is_chosen() -> None:
    plan = plan_vllm("Llama-3.1-70B", device="H100-80GB", context=8192, concurrency=32)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (4, 1)
    assert plan.flags["tensor_parallel_size"] == 4
    assert plan.flags["gpu_memory_utilization"] == 0.9
    assert plan.memory.max_concurrency is not None and plan.memory.max_concurrency >= 32
    smaller = plan_vllm("Llama-3.1-70B", device="H100-80GB", context=8192, concurrency=1)
    assert smaller.tensor_parallel_size == 2  # 70B bf16 weights do not fit one 80 GB GPU
    assert any("--kv-cache-memory-bytes" in note for note in plan.notes)


def test_pipeline_stages_when_one_node_is_not_enough() -> None:
    plan = plan_vllm("Llama-3.1-70B", device="L4-24GB", context=8192, concurrency=16)
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (8, 2)
    assert plan.flags["pipeline_parallel_size"] == 2
    assert plan.memory.num_layers == 40  # one stage's layers
    assert stage_config({"num_hidden_layers": 80, "layer_types": ["a"] * 80}, 3) == {
        "num_hidden_layers": 27, "layer_types": ["a"] * 27}  # fmt: skip


def test_gpus_per_node_bounds_tensor_parallel() -> None:
    plan = plan_vllm("Llama-3.1-70B", device="H100-80GB", context=8192, concurrency=32,
                     gpus_per_node=2)  # fmt: skip
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 2)


def test_explicit_budget_pins_capacity_and_fp8_cache_is_a_flag() -> None:
    plan = plan_vllm("Llama-3.1-8B", kv_cache_bytes="10GiB", kv_dtype="fp8", context=4096)
    assert plan.flags["kv_cache_memory_bytes"] == 10 * 2**30
    assert plan.flags["kv_cache_dtype"] == "fp8"
    assert "gpu_memory_utilization" not in plan.flags
    assert plan.flags["max_num_batched_tokens"] == 4096


def test_concurrency_beyond_capacity_is_capped_and_said() -> None:
    plan = plan_vllm("Llama-3.1-8B", device="L4-24GB", context=8192, concurrency=64, tp=1)
    assert plan.flags["max_num_seqs"] == plan.memory.max_concurrency == 3
    assert "only 3 sequences of 8,192 tokens fit, not 64" in plan.notes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cpu"}, "needs --context N"),
        ({"context": 1024}, "needs --device NAME"),
        ({"device": "cpu", "context": 4096}, "longer than the model's max_position_embeddings"),
        ({"device": "cpu", "context": 64, "kv_dtype": "int8"}, "not modelled"),
        ({"device": "cpu", "context": 64, "kv_scales": "token-head"}, "per-tensor scales"),
        ({"device": "cpu", "context": 64, "gpus_per_node": 0}, "--gpus-per-node"),
    ],
)
def test_bad_input_is_refused_with_what_to_do(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_vllm(bundled_model_path(), **kwargs)


def test_model_that_fits_nowhere_says_so() -> None:
    with pytest.raises(CapacityError, match="do not fit on any layout"):
        plan_vllm("Llama-3.1-70B", memory="8GiB", context=131072, concurrency=64,
                  gpus_per_node=1)  # fmt: skip


def _cli(*args: str) -> str:
    _register_commands()
    result = CliRunner().invoke(main, ["plan", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_prints_a_pasteable_command_and_json() -> None:
    model = str(bundled_model_path())
    out = _cli(model, "--backend", "vllm", "--device", "cpu", "--kv-cache-bytes", "1GiB",
               "--context", "2048")  # fmt: skip
    line = next(x for x in out.splitlines() if "vllm serve" in x).strip()
    argv = shlex.split(line)
    assert argv[:5] == ["env", "-u", "VLLM_CPU_KVCACHE_SPACE", "vllm", "serve"]
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(2**30)
    assert "vLLM should log: KV cache size: 1,048,576 tokens (8,192 blocks of 128" in out
    data = json.loads(_cli(model, "--backend", "vllm", "--device", "cpu", "--kv-cache-bytes",
                           "1GiB", "--context", "2048", "--json"))  # fmt: skip
    assert data["vllm"]["kv_cache_tokens"] == 1_048_576
    assert data["vllm"]["flags"]["max_model_len"] == 2048
    assert data["kv_tokens"] == 1_048_576


def test_latlab_backend_keeps_its_defaults() -> None:
    data = json.loads(_cli("Llama-3.1-8B", "--device", "H100-80GB", "--json"))
    assert (data["tp"], data["block_size"]) == (1, 16)
    assert "vllm" not in data
