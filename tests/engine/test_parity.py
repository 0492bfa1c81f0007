"""Greedy outputs are token-identical to transformers ``generate`` (fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest

from latlab.assets import bundled_model_path
from latlab.engine import LLM, SamplingParams
from latlab.model_files import load_model_config
from latlab.plan.kv import kv_bytes_per_token

from ._reference import hf_greedy, mixed_prompts

MAX_NEW = 10


def _engine_tokens(model_dir: Path, prompts: list[list[int]], **config) -> tuple[list, LLM]:
    llm = LLM(str(model_dir), **config)
    params = SamplingParams(max_tokens=MAX_NEW)
    outs = llm.generate(prompts, params)
    assert [o.prompt_token_ids for o in outs] == prompts
    for o in outs:
        assert o.finish_reason == ("length" if len(o.token_ids) == MAX_NEW else "stop")
    return [o.token_ids for o in outs], llm


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="default"),
        pytest.param({"max_num_batched_tokens": 8}, id="chunked-prefill-8"),
        pytest.param({"enable_prefix_caching": False, "block_size": 4}, id="no-prefix-cache"),
        pytest.param({"max_num_seqs": 2, "block_size": 4}, id="max-num-seqs-2"),
        pytest.param({"native_attention": False}, id="torch-decode-attention"),
        pytest.param({"native_decode": False, "max_num_seqs": 2}, id="torch-decode-layers"),
    ],
)
def test_greedy_matches_transformers_concurrent_mixed_lengths(tiny_model_dir, config):
    prompts = mixed_prompts(6)
    got, _ = _engine_tokens(tiny_model_dir, prompts, **config)
    assert got == hf_greedy(tiny_model_dir, prompts, MAX_NEW)


def test_greedy_matches_with_prefix_cache_hits(tiny_model_dir):
    shared = mixed_prompts(2, seed=5)[1][:32]  # two full blocks of 16
    prompts = [shared + tail for tail in ([7, 8, 9], [100], [5] * 20)] + [shared]
    llm = LLM(str(tiny_model_dir), block_size=16, max_num_batched_tokens=16)
    params = SamplingParams(max_tokens=MAX_NEW)
    first = [o.token_ids for o in llm.generate(prompts, params)]
    second = llm.generate(prompts, params)
    expected = hf_greedy(tiny_model_dir, prompts, MAX_NEW)
    assert first == expected
    assert [o.token_ids for o in second] == expected
    assert all(o.num_cached_tokens >= 16 for o in second)
    stats = llm.engine.stats()
    assert stats.prefix_cache_hits >= 4 * 16
    assert stats.prefix_cache_hits <= stats.prefix_cache_queries


def test_a_reply_s_blocks_are_cached_for_the_next_turn(tiny_model_dir):
    """A chat's next prompt holds the last reply: the blocks its generated tokens filled are
    shared too (they once never were: only the prompt's blocks were registered)."""
    first_prompt = (mixed_prompts(1, seed=9)[0] * 8)[:8]
    llm = LLM(str(tiny_model_dir), block_size=4)
    reply = llm.generate([first_prompt], SamplingParams(max_tokens=20, ignore_eos=True))[0]
    next_prompt = first_prompt + reply.token_ids + [5, 6, 7]  # 31 tokens
    second = llm.generate([next_prompt], SamplingParams(max_tokens=MAX_NEW))[0]
    # the reply's last token was sampled, never computed: 27 computed tokens, 6 full blocks
    assert second.num_cached_tokens == 24
    assert second.token_ids == hf_greedy(tiny_model_dir, [next_prompt], MAX_NEW)[0]


def test_greedy_matches_under_forced_preemption(tiny_model_dir):
    prompts = mixed_prompts(6)
    # 14 blocks of 4 tokens: the longest request (40 + 10 tokens) needs 13 alone, so the six
    # cannot run together and the scheduler must preempt and recompute.
    per_token = kv_bytes_per_token(load_model_config(str(tiny_model_dir)), "float32")
    llm_cfg = {"block_size": 4, "kv_cache_bytes": 14 * 4 * per_token, "max_num_batched_tokens": 16}
    got, llm = _engine_tokens(tiny_model_dir, prompts, **llm_cfg)
    assert llm.engine.stats().num_kv_blocks == 14
    assert llm.engine.stats().num_preemptions > 0
    assert got == hf_greedy(tiny_model_dir, prompts, MAX_NEW)
    assert llm.engine.stats().kv_cache_usage == 0.0


def test_qwen2_attention_bias_matches(qwen2_model_dir):
    prompts = mixed_prompts(4)
    got, _ = _engine_tokens(qwen2_model_dir, prompts, max_num_batched_tokens=16)
    assert got == hf_greedy(qwen2_model_dir, prompts, MAX_NEW)


def test_llama3_rope_scaling_and_tied_embeddings_match(llama3_tied_model_dir):
    prompts = mixed_prompts(4)
    got, _ = _engine_tokens(llama3_tied_model_dir, prompts, max_num_batched_tokens=16)
    assert got == hf_greedy(llama3_tied_model_dir, prompts, MAX_NEW)


@pytest.mark.skipif(
    not (bundled_model_path() / "model.safetensors").exists(),
    reason="bundled model weights not trained/committed yet (src/latlab/assets/tiny-llama)",
)
def test_bundled_model_matches_transformers():
    model_dir = bundled_model_path()
    prompts = mixed_prompts(5)
    got, _ = _engine_tokens(model_dir, prompts, max_num_batched_tokens=8, dtype="float32")
    assert got == hf_greedy(model_dir, prompts, MAX_NEW)
