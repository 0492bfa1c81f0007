"""The fused elementwise ops (step_ops.cpp) equal the torch ops they replace, for float32, bf16
and fp16, odd sizes included; they refuse what they cannot read; engines report them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latlab.engine import LLM
from latlab.engine.kernels import step_ops
from latlab.engine.models.llama import apply_rope
from latlab.engine.sampler import Sampler, greedy_tokens

from ._reference import available_or_skip

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def ops():
    return available_or_skip(step_ops)


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """float32: summation order only; bf16/fp16: one rounding step of the dtype at most."""
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        return
    ulp = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float8_e5m2: 2.0**-2}[dtype]
    bound = 2 * ulp * want.float().abs() + 1e-3
    assert ((got.float() - want.float()).abs() <= bound).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, dim", [(1, 64), (7, 100), (64, 768)])
def test_norms_match_torch(ops, dtype, rows, dim):
    gen = torch.Generator().manual_seed(rows + dim)
    x = torch.randn(rows, dim, generator=gen).to(dtype)
    delta = torch.randn(rows, dim, generator=gen).to(dtype)
    w = (1 + 0.1 * torch.randn(dim, generator=gen)).to(dtype)
    _close(ops.rms_norm(x, w, 1e-6), F.rms_norm(x, (dim,), w, 1e-6), dtype)
    total, normed = ops.add_rms_norm(x, delta, w, 1e-5)
    assert torch.equal(total, x + delta)  # the residual as torch's add rounds it
    _close(normed, F.rms_norm(x + delta, (dim,), w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, inter", [(1, 16), (5, 40), (64, 3072)])
def test_silu_mul_matches_torch(ops, dtype, rows, inter):
    gen = torch.Generator().manual_seed(inter)
    gate_up = (4 * torch.randn(rows, 2 * inter, generator=gen)).to(dtype)
    gate, up = gate_up.float().chunk(2, dim=-1)
    want = (F.silu(gate) * up).to(dtype)  # one rounding, as the fused op
    _close(ops.silu_mul(gate_up), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16, torch.float8_e5m2])
@pytest.mark.parametrize("heads, kv_heads, dim", [(4, 2, 16), (12, 6, 64), (3, 1, 40)])
def test_rope_cache_matches_torch(ops, dtype, kv_dtype, heads, kv_heads, dim):
    gen = torch.Generator().manual_seed(heads * dim)
    n, blocks, block = 9, 6, 4
    qkv = torch.randn(n, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    cos = torch.randn(n, dim, generator=gen).to(dtype)
    sin = torch.randn(n, dim, generator=gen).to(dtype)
    slots = torch.randperm(blocks * block, generator=gen)[:n]
    k_cache = torch.zeros(blocks, kv_heads, block, dim, dtype=kv_dtype)
    v_cache = torch.zeros_like(k_cache)
    q = ops.rope_cache(qkv, cos, sin, k_cache, v_cache, slots, heads)

    heads_in = qkv.float().view(n, heads + 2 * kv_heads, dim)
    cos_f, sin_f = cos.float()[:, None], sin.float()[:, None]
    rotated = apply_rope(heads_in[:, : heads + kv_heads], cos_f, sin_f)
    _close(q, rotated[:, :heads].to(dtype), dtype)
    k_want = torch.zeros(blocks, kv_heads, block, dim)  # slot s: block s // block, row s % block
    v_want = torch.zeros_like(k_want)
    k_want[slots // block, :, slots % block] = rotated[:, heads:]
    v_want[slots // block, :, slots % block] = heads_in[:, heads + kv_heads :]
    _close(k_cache, k_want.to(kv_dtype), kv_dtype)
    # v is converted once, as torch converts it
    assert torch.equal(v_cache.view(torch.uint8), v_want.to(kv_dtype).view(torch.uint8))


def test_fp8_cache_writes_round_as_torch_does(ops):
    """e5m2 by the vector path: nearest even from float32, subnormals, the largest finite value,
    halfway to infinity and beyond, inf and NaN: the same bytes as torch's conversion."""
    heads, kv_heads, dim, n = 2, 1, 16, 64
    edges = torch.tensor([0.0, -0.0, 1e-6, -1e-5, 2.0**-14, 1.5 * 2.0**-15, 3e-5, 6.1e-5,
                          57344.0, 61439.0, 61440.0, -65536.0, 1e5, float("inf"), float("-inf"),
                          float("nan")])  # fmt: skip
    values = torch.cat([edges, 40 * torch.randn(n * dim - edges.numel())]).view(n, dim)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * dim)
    qkv[:, (heads + kv_heads) * dim :] = values
    cache = torch.zeros(n // 4, kv_heads, 4, dim, dtype=torch.float8_e5m2)
    v_cache = torch.zeros_like(cache)
    ones = torch.ones(n, dim)
    ops.rope_cache(qkv, ones, torch.zeros(n, dim), cache, v_cache, torch.arange(n), heads)
    want = values.view(n // 4, 4, kv_heads, dim).transpose(1, 2).to(torch.float8_e5m2)
    assert torch.equal(v_cache.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("rows", "vocab"), [(1, 1), (3, 17), (64, 4096), (5, 32001)])
def test_greedy_argmax_is_torch_s_first_largest(ops, threads, rows, vocab):
    """Columns split over the threads, then merged: the first of tied maxima wins, as with
    torch's max, including ties across two threads' columns and rows of -inf."""
    gen = torch.Generator().manual_seed(rows * vocab + threads)
    logits = torch.randn(rows, vocab, generator=gen) - 10.0  # all negative: no zero may win
    logits[0, vocab - 1] = 50.0
    if vocab > 1:
        logits[0, vocab // 2] = 50.0  # a tie across the threads' halves
        logits[-1] = float("-inf")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = ops.greedy_argmax(logits)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, logits.max(dim=-1).indices)
    sampler = Sampler(argmax=ops.greedy_argmax)
    assert torch.equal(sampler.greedy(logits), greedy_tokens(logits))
    assert torch.equal(sampler.greedy(logits.bfloat16()), greedy_tokens(logits.bfloat16()))


@pytest.mark.parametrize("vocab", [7, 16, 37, 4096])
def test_greedy_argmax_finds_ties_within_a_vector_and_in_the_tail(ops, vocab):
    """The index pass reads 16 columns at a time: the first of two maxima in one vector, a
    maximum in a partial last vector, and a row of -inf (column 0, as torch) still come out."""
    logits = torch.full((4, vocab), -5.0)
    logits[0, [3, 5]] = 9.0  # two maxima in one vector
    logits[1, vocab - 1] = 9.0  # in the last, partial vector
    logits[2] = float("-inf")
    logits[3, vocab // 2 :] = 9.0  # a run of ties: its first
    assert torch.equal(ops.greedy_argmax(logits), logits.max(dim=-1).indices)


def test_greedy_argmax_takes_other_layouts_by_torch_s_max(ops):
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(5))
    for other in (logits.t().contiguous().t(), logits.bfloat16(), logits.double(), logits[:, ::2]):
        assert torch.equal(ops.greedy_argmax(other), other.max(dim=-1).indices)
    with pytest.raises(RuntimeError, match="rows, vocab"):
        ops.greedy_argmax(logits[0])


def test_ops_refuse_what_they_cannot_read(ops):
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="dtypes differ"):
        ops.rms_norm(x, torch.ones(8, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(RuntimeError, match="weight size"):
        ops.rms_norm(x, torch.ones(7), 1e-6)
    with pytest.raises(RuntimeError, match="contiguous 2-D"):
        ops.silu_mul(torch.randn(4, 8).t())
    with pytest.raises(RuntimeError, match="halves"):
        ops.silu_mul(torch.randn(4, 7))
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        ops.silu_mul(torch.ones(2, 4, dtype=torch.int32))
    cache = torch.zeros(3, 2, 4, 8)  # 3 blocks of 2 KV heads, 4 slots each
    cos = torch.ones(4, 8)
    with pytest.raises(RuntimeError, match="do not match"):
        ops.rope_cache(torch.randn(4, 40), cos, cos, cache, cache.clone(), torch.arange(4), 4)
    with pytest.raises(RuntimeError, match="int64 slot"):
        ops.rope_cache(torch.randn(4, 64), cos, cos, cache, cache.clone(), torch.arange(4).int(), 4)
    with pytest.raises(RuntimeError, match="outside the cache's 12 token slots"):
        ops.rope_cache(torch.randn(4, 64), cos, cos, cache, cache.clone(), torch.arange(9, 13), 4)


def test_engine_reports_the_elementwise_path(ops, tiny_model_dir):
    native = LLM(str(tiny_model_dir)).engine.describe()
    assert native["step_ops"].startswith("native fused")
    plain = LLM(str(tiny_model_dir), native_attention=False).engine.describe()
    assert plain["step_ops"].startswith("torch ops (native_attention=False")
