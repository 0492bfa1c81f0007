"""Engine config, model loading errors, KV sizing from the planner's formula, sync API."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from latlab.engine import LLM, EngineConfig, SamplingParams
from latlab.engine.llm_engine import LLMEngine
from latlab.engine.models.packed_linear import onednn_packs
from latlab.errors import CapacityError, ConfigError, ModelLoadError, OverloadedError
from latlab.model_files import load_model_config
from latlab.plan.kv import kv_bytes_per_token
from latlab.testing.random_model import TINY_TEST, save_random_llama

from ._reference import hf_greedy, mixed_prompts


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dtype", "int4"),
        ("kv_cache_dtype", "fp4"),
        ("block_size", 0),
        ("max_num_seqs", -1),
        ("max_num_batched_tokens", 0),
        ("max_waiting", 0),
        ("max_model_len", 0),
        ("num_threads", 0),
        ("kv_cache_bytes", -5),
        ("kv_cache_memory_fraction", 1.5),
        ("debug_step_delay_s", -0.1),
        ("debug_step_delay_s", 61),
    ],
)
def test_bad_engine_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        EngineConfig(**{field: value})


def test_block_count_is_budget_over_planner_bytes_per_token(tiny_model_dir):
    budget = 1_000_000
    llm = LLM(str(tiny_model_dir), kv_cache_bytes=budget, block_size=16)
    per_token = kv_bytes_per_token(load_model_config(str(tiny_model_dir)), "float32")
    assert per_token == 2 * 2 * 2 * 16 * 4  # K+V x layers x kv heads x head_dim x fp32
    assert llm.engine.stats().num_kv_blocks == budget // (16 * per_token)
    bf16 = LLM(str(tiny_model_dir), kv_cache_bytes=budget, dtype="bfloat16")
    assert bf16.engine.stats().num_kv_blocks == budget // (16 * per_token // 2)


def test_unsupported_architecture_is_named(tiny_model_dir, tmp_path):
    bad = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel"):
        LLM(str(bad))


def test_missing_model_dir_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LLM(str(tmp_path / "nope"))


def test_unknown_engine_option_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="unknown engine option"):
        LLM(str(tiny_model_dir), max_batch=3)


def test_max_model_len_above_model_limit_is_rejected(tiny_model_dir):
    with pytest.raises(ConfigError, match="max_model_len"):
        LLM(str(tiny_model_dir), max_model_len=10**6)


def test_budget_without_a_single_block_is_a_capacity_error(tiny_model_dir):
    with pytest.raises(CapacityError, match="kv_cache_bytes"):
        LLM(str(tiny_model_dir), kv_cache_bytes=100)


def test_sync_engine_overload_abort_and_string_prompts(tiny_model_dir):
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), max_waiting=2))
    engine.add_request("hello there", SamplingParams(max_tokens=4), request_id="a")
    engine.add_request("general kenobi", SamplingParams(max_tokens=4), request_id="b")
    with pytest.raises(OverloadedError):
        engine.add_request("one too many")
    with pytest.raises(ConfigError, match="already in use"):
        engine.add_request("dup", request_id="a")
    engine.step()
    assert engine.stats().kv_cache_usage > 0
    assert engine.abort("a") and not engine.abort("a")
    while engine.has_unfinished():
        engine.step()
    assert engine.stats().kv_cache_usage == 0.0


def test_generate_keeps_prompt_order_and_accepts_one_prompt(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), max_num_seqs=2)
    prompts = ["a longer first prompt with several words", "b", "third"]
    outs = llm.generate(prompts, SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=True)
    assert [o.prompt for o in outs] == prompts
    assert outs[0].prompt_token_ids == llm.tokenizer.encode(prompts[0])
    single = llm.generate("b", SamplingParams(max_tokens=3, ignore_eos=True))
    assert len(single) == 1 and single[0].token_ids == outs[1].token_ids
    with pytest.raises(ConfigError, match="sampling params"):
        llm.generate(prompts, [SamplingParams()])


def test_mistral_matches_transformers(tmp_path):
    shape = dataclasses.replace(TINY_TEST, model_type="mistral")
    model_dir = save_random_llama(tmp_path / "mistral", shape, seed=4)
    prompts = mixed_prompts(3)
    llm = LLM(str(model_dir), max_num_batched_tokens=16)
    outs = llm.generate(prompts, SamplingParams(max_tokens=8))
    assert [o.token_ids for o in outs] == hf_greedy(model_dir, prompts, 8)


@pytest.mark.skipif(
    not onednn_packs(torch.bfloat16),
    reason="oneDNN cannot pack bf16 linears on this CPU (needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)",
)
def test_packed_linear_gives_the_plain_tokens_in_bf16(tiny_model_dir):
    """Same steps, packed (oneDNN's, or AMX tiles where the CPU has them: sums in another order,
    the last bit of ~0.02% of outputs) or plain GEMMs: the same tokens. Both chunk alike: in bf16 a
    token computed in a mixed prefill step (SDPA) and in a pure decode step (the paged kernel)
    differ in the last bits, so different chunking alone can flip a near-tie of this random
    model's logits (seen for 2 of 5 seeds on the torch ops too)."""
    prompts = mixed_prompts(4)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    chunked = {"dtype": "bfloat16", "max_num_batched_tokens": 16}
    packed = LLM(str(tiny_model_dir), **chunked)
    plain = LLM(str(tiny_model_dir), packed_linear=False, **chunked)
    assert packed.engine.runner.packed_linear and not plain.engine.runner.packed_linear
    small_steps = LLM(str(tiny_model_dir), max_num_seqs=4)  # fp32, 1-4 rows: plain weights
    assert not small_steps.engine.runner.packed_linear
    got = [o.token_ids for o in packed.generate(prompts, params)]
    assert got == [o.token_ids for o in plain.generate(prompts, params)]


@pytest.mark.slow
def test_compile_matches_eager(tiny_model_dir):
    """torch.compile (about 30 s of compile on 2 cores) gives the same greedy tokens."""
    prompts = mixed_prompts(2)
    params = SamplingParams(max_tokens=3)
    compiled = LLM(str(tiny_model_dir), compile=True).generate(prompts, params)
    assert [o.token_ids for o in compiled] == hf_greedy(tiny_model_dir, prompts, 3)


def test_compile_with_packed_linear_is_refused(tiny_model_dir):
    with pytest.raises(ConfigError, match="packed_linear"):
        LLM(str(tiny_model_dir), compile=True, packed_linear=True, dtype="bfloat16")


def test_on_cuda_the_kv_budget_comes_out_of_the_gpus_memory_not_the_hosts(monkeypatch):
    from latlab.engine import config as config_module

    card = type("Props", (), {"total_memory": 80 * 2**30})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: card)
    monkeypatch.setattr(config_module, "total_ram_bytes", lambda: 4 * 2**30)
    on_gpu = EngineConfig(device="cuda", kv_cache_memory_fraction=0.5)
    assert on_gpu.kv_budget_bytes(1024, 2048) == 40 * 2**30
    assert EngineConfig(device="cuda:1").kv_budget_bytes(2**20, 2**20) == 20 * 2**30  # 25% cap
    assert EngineConfig(kv_cache_memory_fraction=0.5).kv_budget_bytes(1024, 2048) == 2 * 2**30
