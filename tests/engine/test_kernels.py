"""The native paged decode attention equals gathered-K/V attention, for every dtype pairing;
an engine start never compiles it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latlab.engine import LLM, kernels
from latlab.engine.kernels import paged_decode_attention

from ._reference import built_or_skip


@pytest.fixture(scope="module")
def kernel():
    return built_or_skip(paged_decode_attention)


def _gathered(cache, tables):
    """[kv_heads, B, T, dim] from a [blocks, kv_heads, block, dim] cache."""
    _, kv_heads, block, dim = cache.shape
    b = tables.shape[0]
    blocks = cache.index_select(0, tables.reshape(-1)).view(b, -1, kv_heads, block, dim)
    return blocks.permute(2, 0, 1, 3, 4).reshape(kv_heads, b, -1, dim).float()


def _reference(q, k_cache, v_cache, tables, lens, scale):
    _, kv_heads, block, dim = k_cache.shape
    b, heads = q.shape[:2]
    t = tables.shape[1] * block
    keys, values = _gathered(k_cache, tables), _gathered(v_cache, tables)
    qg = q.float().view(b, kv_heads, heads // kv_heads, dim).transpose(0, 1)
    scores = torch.matmul(qg, keys.transpose(2, 3)) * scale
    visible = torch.arange(t).view(1, 1, 1, t) < lens.view(1, b, 1, 1)
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.matmul(probs, values).transpose(0, 1).reshape(b, heads, dim)


@pytest.mark.parametrize(
    ("q_dtype", "kv_dtype", "tol"),
    [
        (torch.float32, torch.float32, 1e-5),
        (torch.float32, torch.bfloat16, 1e-5),
        (torch.float32, torch.float16, 1e-5),
        (torch.float32, torch.float8_e5m2, 1e-5),
        (torch.bfloat16, torch.bfloat16, 2e-2),
        (torch.bfloat16, torch.float8_e5m2, 2e-2),
    ],
)
@pytest.mark.parametrize("group", [1, 4])
def test_kernel_matches_gathered_attention(kernel, q_dtype, kv_dtype, tol, group):
    gen = torch.Generator().manual_seed(0)
    kv_heads, dim, blocks, block, b = 2, 32, 40, 4, 5
    k_cache = torch.randn(blocks, kv_heads, block, dim, generator=gen).to(kv_dtype)
    v_cache = torch.randn(blocks, kv_heads, block, dim, generator=gen).to(kv_dtype)
    lens = torch.tensor([1, 4, 5, 13, 16])  # one key, a full block, block edges, ragged
    tables = torch.stack([torch.randperm(blocks, generator=gen)[:4] for _ in range(b)])
    q = torch.randn(b, kv_heads * group, dim, generator=gen).to(q_dtype)
    got = kernel(q, k_cache, v_cache, tables, lens, dim**-0.5)
    assert got.dtype == q_dtype and got.shape == q.shape
    want = _reference(q, k_cache, v_cache, tables, lens, dim**-0.5)
    assert (got.float() - want).abs().max() < tol


@pytest.mark.parametrize("dim", [64, 128, 40])  # the vector paths' sizes, and the portable one
@pytest.mark.parametrize("group", [1, 2, 7])
def test_kernel_matches_over_long_ragged_sequences(kernel, dim, group):
    """Many blocks per sequence (the next block is prefetched), scores past a 16-lane vector."""
    gen = torch.Generator().manual_seed(dim + group)
    kv_heads, blocks, block = 2, 64, 16
    k_cache = (3 * torch.randn(blocks, kv_heads, block, dim, generator=gen)).bfloat16()
    v_cache = torch.randn(blocks, kv_heads, block, dim, generator=gen).bfloat16()
    lens = torch.tensor([1, 17, 160, 255, 33])
    tables = torch.stack([torch.randperm(blocks, generator=gen)[:16] for _ in range(5)])
    q = torch.randn(5, kv_heads * group, dim, generator=gen)
    got = kernel(q, k_cache, v_cache, tables, lens, dim**-0.5)
    want = _reference(q, k_cache, v_cache, tables, lens, dim**-0.5)
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("dim", [32, 64, 128, 256])
@pytest.mark.parametrize(("group", "block"), [(1, 16), (2, 16), (7, 32), (16, 16)])
def test_scores_on_amx_tiles_match_the_vector_path(kernel, dim, group, block):
    """bf16 q.K on AMX tiles (where the CPU has them, from 64 keys): whole 16-key tiles, then the
    vector way for a sequence's last keys; the unused rows of a last block (NaN here) are never
    read into a score."""
    gen = torch.Generator().manual_seed(dim * group + block)
    kv_heads, blocks = 2, 6 * 13
    k_cache = (3 * torch.randn(blocks, kv_heads, block, dim, generator=gen)).bfloat16()
    v_cache = torch.randn(blocks, kv_heads, block, dim, generator=gen).bfloat16()
    lens = torch.tensor([1, 17, 64, 79, 80, 200])
    tables = torch.randperm(blocks, generator=gen).view(6, 13)  # no block shared
    for row, n in enumerate(lens.tolist()):  # the rows past each sequence's end: NaN
        last = tables[row, (n - 1) // block]
        k_cache[last, :, (n - 1) % block + 1 :] = float("nan")
        v_cache[last, :, (n - 1) % block + 1 :] = float("nan")
    q = torch.randn(6, kv_heads * group, dim, generator=gen).bfloat16()
    tiles = kernel(q, k_cache, v_cache, tables, lens, dim**-0.5, tiles=True)
    vector = kernel(q, k_cache, v_cache, tables, lens, dim**-0.5, tiles=False)
    want = _reference(q, k_cache.nan_to_num(), v_cache.nan_to_num(), tables, lens, dim**-0.5)
    assert not tiles.isnan().any()
    assert (tiles.float() - want).abs().max() < 2e-2
    vector_error = (vector.float() - want).abs().max()
    assert (tiles.float() - vector.float()).abs().max() <= vector_error + 1e-2


def test_kernel_rejects_what_it_cannot_read(kernel):
    q = torch.randn(2, 4, 8)
    cache = torch.randn(3, 2, 4, 8)  # 3 blocks of 2 KV heads
    tables, lens = torch.zeros(2, 1, dtype=torch.long), torch.ones(2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="int64"):
        kernel(q, cache, cache, tables.int(), lens, 1.0)
    with pytest.raises(RuntimeError, match="head"):
        kernel(torch.randn(2, 3, 8), cache, cache, tables, lens, 1.0)
    with pytest.raises(RuntimeError, match="K and V caches differ"):  # V would be misread
        kernel(q, cache, cache.bfloat16(), tables, lens, 1.0)


def test_engine_reports_the_attention_path(kernel, tiny_model_dir):
    native = LLM(str(tiny_model_dir)).engine.describe()
    assert "native" in native["decode_attention"]
    plain = LLM(str(tiny_model_dir), native_attention=False).engine.describe()
    assert "native_attention=False" in plain["decode_attention"]


def test_the_kernel_names_the_vector_path_the_cpu_gets(kernel):
    """16 lanes on a CPU with AVX-512 (F and BW), 8 on one with AVX2 and FMA (the build targets
    the machine it runs on): the report says which, as the two run 1.4-2.5x apart."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    reason = paged_decode_attention(wait=True).reason
    if {"avx512f", "avx512bw"} <= flags:
        assert "16-lane AVX-512" in reason
    elif {"avx2", "fma"} <= flags:
        assert "8-lane AVX2" in reason
    else:
        assert "portable" in reason


def test_engine_start_uses_the_torch_path_until_the_kernel_is_built(
    tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty extension cache
    monkeypatch.setattr(kernels, "_loaded", {})
    assert not kernels.is_built()
    waiting = paged_decode_attention(wait=False)
    assert waiting.fn is None and "not built yet" in waiting.reason
    report = LLM(str(tiny_model_dir)).engine.describe()
    assert "not built yet" in report["decode_attention"]
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.o"))  # no compile


def test_a_build_in_progress_is_not_taken_for_a_finished_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    directory = kernels.build_directory()
    directory.mkdir(parents=True, exist_ok=True)  # torch creates it when asked for it
    (directory / f"{directory.name}.so").write_bytes(b"half-linked")
    (directory / "lock").touch()
    assert not kernels.is_built()
    (directory / "lock").unlink()
    assert kernels.is_built()
    monkeypatch.setattr(kernels, "_loaded", {})
    broken = paged_decode_attention(wait=False)
    assert broken.fn is None and "does not load" in broken.reason


def test_the_torch_path_can_be_forced(monkeypatch):
    monkeypatch.setenv("LATLAB_NATIVE_KERNELS", "0")
    assert paged_decode_attention(wait=True).reason == "LATLAB_NATIVE_KERNELS=0"
