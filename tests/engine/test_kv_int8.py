"""The int8 KV cache: its layout (row scales after the values), its rounding, the native
kernels over it against the dequantized cache, the same bytes from the native and the torch
writes, and an engine that holds ~1.9x the tokens of bf16 with logits near a float32 cache's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latlab.engine import LLM, SamplingParams, kv_int8
from latlab.engine.kernels import paged_decode_attention, step_ops
from latlab.errors import ConfigError
from latlab.testing.random_model import TINY_TEST, save_random_llama

from ._reference import available_or_skip, built_or_skip
from .test_kernels import _reference


@pytest.fixture(scope="module")
def kernel():
    return built_or_skip(paged_decode_attention)


@pytest.fixture(scope="module")
def ops():
    return available_or_skip(step_ops)


def _int8_cache(x: torch.Tensor) -> torch.Tensor:
    """An int8 cache holding ``x`` [NB, KVH, BS, D] quantized per row."""
    (cache,) = kv_int8.zeros(1, tuple(x.shape), torch.device("cpu"))
    values, scales = kv_int8.quantize(x)
    cache.copy_(values)
    kv_int8.row_scales(cache).copy_(scales)
    return cache


def _dequantized(cache: torch.Tensor) -> torch.Tensor:
    return cache.float() * kv_int8.row_scales(cache).unsqueeze(-1)


def test_scales_follow_the_values_in_one_storage():
    shape = (3, 2, 4, 8)
    first, second = kv_int8.zeros(2, shape, torch.device("cpu"))
    assert first.dtype == torch.int8 and first.shape == shape and not first.any()
    scales = kv_int8.row_scales(first)
    assert scales.shape == (3, 2, 4) and scales.dtype == torch.float32
    scales[1, 0, 2] = 0.5  # a view: the cache's own scale
    assert kv_int8.row_scales(first)[1, 0, 2] == 0.5 and not kv_int8.row_scales(second).any()
    assert first.untyped_storage().nbytes() == kv_int8.storage_bytes(shape) == 192 + 24 * 4


def test_a_cache_without_scales_is_refused(kernel, ops):
    plain = torch.zeros(3, 2, 4, 8, dtype=torch.int8)  # no room for scales after the values
    with pytest.raises(ValueError, match=r"kv_int8\.zeros"):
        kv_int8.row_scales(plain)
    with pytest.raises(RuntimeError, match=r"kv_int8\.zeros"):
        kernel(torch.randn(1, 2, 8), plain, plain, torch.zeros(1, 1, dtype=torch.long),
               torch.ones(1, dtype=torch.long), 1.0)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"kv_int8\.zeros"):
        ops.rope_cache(torch.randn(1, 48), torch.ones(1, 8), torch.zeros(1, 8), plain, plain,
                       torch.zeros(1, dtype=torch.long), 2)  # fmt: skip
    with pytest.raises(ConfigError, match="divisible by 4"):
        kv_int8.zeros(1, (2, 1, 4, 6), torch.device("cpu"))


def test_rows_round_half_to_even_within_half_a_step():
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5, -127.0], [0.0] * 5, [3.0, -1.0, 0.0, 0.0, 0.0]])
    values, scales = kv_int8.quantize(x)
    assert values.tolist()[0] == [127, 0, 2, -2, -127]  # scale 1: halves go to the even side
    assert values[1].tolist() == [0] * 5 and scales[1] == 0  # a zero row stays zeros
    assert values[2].tolist() == [127, -42, 0, 0, 0]
    gen = torch.Generator().manual_seed(0)
    rows = 5 * torch.randn(64, 128, generator=gen)
    values, scales = kv_int8.quantize(rows)
    error = (values.float() * scales[:, None] - rows).abs()
    assert (error <= scales[:, None] / 2 + 1e-6).all() and values.abs().max() == 127


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [32, 64, 40])  # the vector paths' sizes and the portable one
@pytest.mark.parametrize("group", [1, 2, 7])
def test_attention_over_int8_equals_attention_over_its_dequantized_cache(
    kernel, q_dtype, dim, group
):
    """Scores take each key row's scale, value sums each value row's: the same numbers as the
    float attention over the dequantized cache, up to float32 summation order (and the bf16
    output's rounding), over sequences of 1-200 keys (the AMX score tiles are bf16-only)."""
    gen = torch.Generator().manual_seed(dim * group)
    kv_heads, blocks, block = 2, 6 * 13, 16
    k_cache = _int8_cache(3 * torch.randn(blocks, kv_heads, block, dim, generator=gen))
    v_cache = _int8_cache(torch.randn(blocks, kv_heads, block, dim, generator=gen))
    lens = torch.tensor([1, 17, 64, 79, 80, 200])
    tables = torch.randperm(blocks, generator=gen).view(6, 13)
    q = torch.randn(6, kv_heads * group, dim, generator=gen).to(q_dtype)
    for tiles in (True, False):
        got = kernel(q, k_cache, v_cache, tables, lens, dim**-0.5, tiles=tiles)
        want = _reference(q, _dequantized(k_cache), _dequantized(v_cache), tables, lens, dim**-0.5)
        tol = 1e-5 if q_dtype == torch.float32 else 2e-2
        assert got.dtype == q_dtype and (got.float() - want).abs().max() < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 40])
def test_native_cache_writes_are_the_torch_quantizer_s_bytes(ops, dtype, dim):
    """rope_cache with cos 1 and sin 0 writes k and v as they are: its int8 values and scales are
    kv_int8.quantize's, byte for byte, vector path and tail alike."""
    heads, kv_heads, n, block = 4, 2, 12, 4
    gen = torch.Generator().manual_seed(dim)
    qkv = (4 * torch.randn(n, (heads + 2 * kv_heads) * dim, generator=gen)).to(dtype)
    qkv[3, heads * dim : (heads + 1) * dim] = 0  # a zero k row: scale 0, values 0
    slots = torch.randperm(4 * n, generator=gen)[:n]
    k_cache, v_cache = kv_int8.zeros(2, (n, kv_heads, block, dim), torch.device("cpu"))
    ones, zeros = torch.ones(n, dim, dtype=dtype), torch.zeros(n, dim, dtype=dtype)
    ops.rope_cache(qkv, ones, zeros, k_cache, v_cache, slots, heads)
    rows = qkv.float().view(n, heads + 2 * kv_heads, dim)
    for cache, first in ((k_cache, heads), (v_cache, heads + kv_heads)):
        values, scales = kv_int8.quantize(rows[:, first : first + kv_heads])
        assert torch.equal(cache[slots // block, :, slots % block], values)
        assert torch.equal(kv_int8.row_scales(cache)[slots // block, :, slots % block], scales)
    assert kv_int8.row_scales(k_cache)[slots[3] // block, 0, slots[3] % block] == 0


def _kl(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(
        torch.nn.functional.kl_div(
            got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="batchmean"
        )
    )


def test_int8_cache_holds_nearly_twice_bf16_s_tokens_with_logits_near_float32(tiny_model_dir):
    """A token's K and V take head_dim + 4 bytes per head (the scale), ~0.53x bf16 at head size
    64; the native kernels' and the torch path's logits over a text stay much closer to a float32
    cache's than fp8 e5m2's do; decode steps run on both paths."""
    budget = 2_000_000
    int8 = LLM(str(tiny_model_dir), kv_cache_bytes=budget, kv_cache_dtype="int8").engine
    full = LLM(str(tiny_model_dir), kv_cache_bytes=budget, kv_cache_dtype="float32").engine
    fp8 = LLM(str(tiny_model_dir), kv_cache_bytes=budget, kv_cache_dtype="fp8_e5m2").engine
    dim = full.model_args.head_dim
    assert int8.describe()["kv_cache_dtype"] == "int8"
    assert int8.kv_bytes_per_token * 4 * dim == full.kv_bytes_per_token * (dim + 4)
    assert int8.stats().kv_cache_tokens >= full.stats().kv_cache_tokens * 4 * dim // (dim + 4) - 16
    ids = [(7 * i + 3) % 200 + 10 for i in range(40)]
    want = full.runner.score(ids)
    fp8_kl = _kl(fp8.runner.score(ids), want)
    plain_llm = LLM(str(tiny_model_dir), kv_cache_dtype="int8", native_attention=False)
    for engine in (int8, plain_llm.engine):  # the native kernels' writes and reads; torch's
        got = engine.runner.score(ids)
        assert torch.isfinite(got).all()
        assert 0 < _kl(got, want) < fp8_kl / 10
    for llm in (LLM(str(tiny_model_dir), kv_cache_dtype="int8"), plain_llm):
        (done,) = llm.generate([ids[:8]], SamplingParams(max_tokens=12, ignore_eos=True))
        assert len(done.token_ids) == 12


def test_a_head_size_the_scales_cannot_follow_is_refused_at_start(tmp_path):
    """Head size 6 (hidden 24, 4 heads): the scales would start off a float32 boundary."""
    odd = save_random_llama(tmp_path, dataclasses.replace(TINY_TEST, hidden_size=24))
    with pytest.raises(ConfigError, match="head size divisible by 4; this model's is 6"):
        LLM(str(odd), kv_cache_dtype="int8")
    (done,) = LLM(str(odd), kv_cache_dtype="fp8_e5m2").generate([[5, 6, 7]])
    assert done.token_ids
