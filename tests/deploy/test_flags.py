"""Engine settings <-> command-line flags, and KEY=VALUE parsing."""

from __future__ import annotations

import pytest

from latlab.deploy.flags import flag_name, parse_env, parse_settings, scalar, to_flags
from latlab.errors import ConfigError


def test_flag_names_accept_either_spelling() -> None:
    assert flag_name("max_num_seqs") == "--max-num-seqs"
    assert flag_name("max-num-seqs") == "--max-num-seqs"
    assert flag_name("--enforce-eager") == "--enforce-eager"


def test_values_become_flags_in_order() -> None:
    argv = to_flags({
        "max_num_seqs": 8,
        "enable_prefix_caching": False,
        "enforce_eager": True,
        "gpu_memory_utilization": 0.85,
        "kv_cache_dtype": "fp8",
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 4},
        "quantization": None,
    })  # fmt: skip
    assert argv == [
        "--max-num-seqs", "8",
        "--no-enable-prefix-caching",
        "--enforce-eager",
        "--gpu-memory-utilization", "0.85",
        "--kv-cache-dtype", "fp8",
        "--speculative-config", '{"method":"ngram","num_speculative_tokens":4}',
    ]  # fmt: skip


def test_scalars_are_typed() -> None:
    assert scalar("8") == 8
    assert scalar("0.9") == 0.9
    assert scalar("TRUE") is True
    assert scalar("false") is False
    assert scalar("none") is None
    assert scalar("fp8") == "fp8"
    assert scalar('{"method": "ngram"}') == {"method": "ngram"}
    with pytest.raises(ConfigError, match="looks like JSON"):
        scalar("{not json")


def test_settings_are_snake_case_and_typed() -> None:
    got = parse_settings(["max-num-seqs=4", "enforce_eager=true"], "--engine-arg")
    assert got == {"max_num_seqs": 4, "enforce_eager": True}
    with pytest.raises(ConfigError, match="--engine-arg 'max_num_seqs' must look like KEY=VALUE"):
        parse_settings(["max_num_seqs"], "--engine-arg")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_settings(["=4"], "--engine-arg")


def test_env_names_are_kept_exactly() -> None:
    got = parse_env(["VLLM_CPU_KVCACHE_SPACE=1", "CUDA_VISIBLE_DEVICES="], "--engine-env")
    assert got == {"VLLM_CPU_KVCACHE_SPACE": "1", "CUDA_VISIBLE_DEVICES": ""}
    for bad in ("NOVALUE", "=1", "BAD NAME=1"):
        with pytest.raises(ConfigError, match="NAME=VALUE"):
            parse_env([bad], "--engine-env")
