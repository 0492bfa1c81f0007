"""The one dtype table and the one rule for "auto"."""

from __future__ import annotations

import pytest
import torch

from latlab import dtypes
from latlab.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "checkpoint", "expected"),
    [
        ("auto", "bfloat16", "bfloat16"),
        ("auto", None, "float32"),
        ("auto", "int8", "float32"),  # not a dtype latlab runs in: the float32 fallback
        ("float16", "bfloat16", "float16"),
    ],
)
def test_resolve(name, checkpoint, expected):
    assert dtypes.resolve(name, checkpoint) == expected


def test_checkpoint_dtype_reads_new_and_old_keys():
    assert dtypes.checkpoint_dtype({"dtype": "bfloat16", "torch_dtype": "float32"}) == "bfloat16"
    assert dtypes.checkpoint_dtype({"torch_dtype": "float16"}) == "float16"
    assert dtypes.checkpoint_dtype({}) is None


def test_torch_names_round_trip():
    for name in dtypes.DTYPES:
        assert dtypes.dtype_name(dtypes.torch_dtype(name)) == name
    assert dtypes.torch_dtype("bfloat16") is torch.bfloat16


def test_the_kv_cache_may_also_hold_fp8_e5m2():
    assert dtypes.check_kv_dtype("fp8_e5m2") == "fp8_e5m2"
    assert dtypes.kv_torch_dtype("fp8_e5m2") is torch.float8_e5m2
    assert dtypes.dtype_name(torch.float8_e5m2) == "fp8_e5m2"
    for name in dtypes.DTYPES:
        assert dtypes.kv_torch_dtype(name) is dtypes.torch_dtype(name)
    with pytest.raises(ConfigError, match="fp8_e5m2"):
        dtypes.check_kv_dtype("fp8_e4m3")
    with pytest.raises(ConfigError):  # weights are never fp8
        dtypes.check_dtype("fp8_e5m2")
    with pytest.raises(ConfigError):
        dtypes.torch_dtype("fp8_e5m2")


@pytest.mark.parametrize("bad", ["int4", "fp16", "", "Float32"])
def test_unknown_names_are_refused_with_the_choices(bad):
    with pytest.raises(ConfigError, match="float32"):
        dtypes.check_dtype(bad)
    with pytest.raises(ConfigError):
        dtypes.torch_dtype(bad)
    with pytest.raises(ConfigError, match="latlab runs models in"):
        dtypes.dtype_name(torch.int16)


def test_the_kv_cache_may_hold_int8_with_row_scales():
    assert dtypes.check_kv_dtype("int8") == "int8"
    assert dtypes.kv_torch_dtype("int8") is torch.int8
    assert dtypes.dtype_name(torch.int8) == "int8"
    assert dtypes.kv_scales("int8") == "token-head"  # a float32 scale per token and KV head
    assert {dtypes.kv_scales(name) for name in ("bfloat16", "fp8_e5m2")} == {"tensor"}
    with pytest.raises(ConfigError):  # int8 weights are a quantization, not a dtype
        dtypes.check_dtype("int8")
