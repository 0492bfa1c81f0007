"""EngineConfig.from_options: the one front door from keyword options; the KV dtype rule."""

from __future__ import annotations

import pytest
import torch

from latlab.engine import LLM, EngineConfig, SamplingParams
from latlab.errors import ConfigError
from latlab.model_files import load_model_config
from latlab.plan.kv import kv_bytes_per_token


def test_unknown_option_lists_every_setting_and_the_closest():
    with pytest.raises(ConfigError) as err:
        EngineConfig.from_options(max_num_seq=4)
    message = str(err.value)
    assert "unknown engine option" in message and "has no setting max_num_seq" in message
    assert "block_size" in message and "did you mean max_num_seqs?" in message


def test_text_values_are_read_as_their_field_reads_them():
    config = EngineConfig.from_options(kv_cache_bytes="2GiB", max_num_seqs=4)
    assert config.kv_cache_bytes == 2 * 2**30 and config.max_num_seqs == 4
    with pytest.raises(ConfigError, match="kv_cache_bytes"):
        EngineConfig.from_options(kv_cache_bytes="lots")
    with pytest.raises(ConfigError, match="max_num_seqs takes a number"):
        EngineConfig.from_options(max_num_seqs="many")


def test_two_kv_budgets_are_refused():
    with pytest.raises(ConfigError, match="not both"):
        EngineConfig.from_options(kv_cache_bytes=10**9, kv_cache_memory_fraction=0.1)


def test_config_is_keyword_only():
    with pytest.raises(TypeError):
        EngineConfig("model-dir")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("dtype", "kv", "checkpoint", "expected"),
    [
        ("auto", "auto", "bfloat16", ("bfloat16", "bfloat16")),
        ("auto", "auto", None, ("float32", "float32")),
        ("float32", "auto", "bfloat16", ("float32", "float32")),
        ("bfloat16", "float32", "float32", ("bfloat16", "float32")),
    ],
)
def test_kv_dtype_auto_is_the_weight_dtype(dtype, kv, checkpoint, expected):
    config = EngineConfig(dtype=dtype, kv_cache_dtype=kv)
    assert (config.weight_dtype(checkpoint), config.kv_dtype(checkpoint)) == expected


def test_fp8_kv_cache_holds_twice_the_tokens_at_a_small_cost_in_logits(tiny_model_dir):
    """fp8_e5m2 halves a token's bytes, so a budget holds twice the tokens; the logits over a
    text stay close to a float32 cache's (the tiny model's logits are near-flat, so the bound is
    on their distance, not on top-1)."""
    budget = 2_000_000
    fp8 = LLM(str(tiny_model_dir), kv_cache_bytes=budget, kv_cache_dtype="fp8_e5m2").engine
    full = LLM(str(tiny_model_dir), kv_cache_bytes=budget, kv_cache_dtype="float32").engine
    assert fp8.describe()["kv_cache_dtype"] == "fp8_e5m2"
    assert fp8.kv_bytes_per_token * 4 == full.kv_bytes_per_token
    assert fp8.stats().kv_cache_tokens >= 4 * full.stats().kv_cache_tokens - 16
    ids = [(7 * i + 3) % 200 + 10 for i in range(40)]
    want = full.runner.score(ids)
    plain_llm = LLM(str(tiny_model_dir), kv_cache_dtype="fp8_e5m2", native_attention=False)
    for engine in (fp8, plain_llm.engine):  # the native kernels' fp8 writes and reads; torch's
        got = engine.runner.score(ids)
        assert torch.isfinite(got).all()
        kl = torch.nn.functional.kl_div(
            got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="batchmean"
        )
        assert 0 < float(kl) < 0.05
    # decode steps on the torch path over an fp8 cache
    (done,) = plain_llm.generate([ids[:8]], SamplingParams(max_tokens=12, ignore_eos=True))
    assert len(done.token_ids) == 12


def test_stats_report_the_kv_cache_the_engine_allocated(tiny_model_dir):
    budget = 1_000_000
    for dtype, kv_dtype in (("float32", "float32"), ("bfloat16", "bfloat16")):
        stats = LLM(str(tiny_model_dir), kv_cache_bytes=budget, dtype=dtype).engine.stats()
        per_token = kv_bytes_per_token(load_model_config(str(tiny_model_dir)), kv_dtype)
        assert stats.kv_cache_tokens == stats.num_kv_blocks * 16
        assert stats.kv_cache_bytes == stats.kv_cache_tokens * per_token
        assert budget - 16 * per_token < stats.kv_cache_bytes <= budget  # whole blocks only
