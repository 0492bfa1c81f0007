"""The float32 panel GEMM (kernels/f32_panels.cpp) against float64 arithmetic at every row
count its register blocks and K blocks cover; what it refuses; how the engine packs with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latlab.engine import LLM
from latlab.engine.hardware import cpu_capabilities
from latlab.engine.kernels import f32_panels
from latlab.engine.models.panel_linear import PanelPackedLinear, pack_linears_panels

from ._reference import available_or_skip


@pytest.fixture(scope="module")
def panels():
    return available_or_skip(f32_panels)


def _close(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """float32 sums in another order than float64's: within a few float32 steps of the sum of
    magnitudes."""
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    scale = F.linear(x.double().abs(), w.double().abs()) + 1
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert ((got.double() - want).abs() <= 1e-6 * scale).all()


# rows: one group, each remainder of a 6-row group, a decode batch, a prefill; k: under one
# 256-wide K block, several blocks with a short last one
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 11, 64, 131])
@pytest.mark.parametrize(("n", "k"), [(16, 40), (48, 600), (64, 768)])
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_matches_float64_arithmetic(panels, rows, n, k, bias):
    gen = torch.Generator().manual_seed(rows * n + k)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    _close(panels.linear(x, panels.pack(w), b), x, w, b)


# 13 rows: read in place; from 32 up: copied into 6-row groups first (33, 131: a short last one)
@pytest.mark.parametrize("rows", [13, 33, 64, 131])
def test_threads_split_the_grouped_copy_and_the_panels_without_changing_a_bit(panels, rows):
    """From 32 rows up each thread copies a share of x's rows into the 6-row groups (two threads
    may fill one group), then runs its panels; the sums stay the same at any thread count."""
    gen = torch.Generator().manual_seed(rows)
    x, w, b = torch.randn(rows, 600, generator=gen), torch.randn(96, 600, generator=gen), None
    packed, before = panels.pack(w), torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(panels.linear(x, packed, b))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:])
    _close(results[0], x, w, b)


def test_kernel_reads_strided_rows_and_returns_nothing_for_none(panels):
    w = torch.randn(32, 64)
    x = torch.randn(8, 128)[:, ::2]  # not contiguous
    _close(panels.linear(x, panels.pack(w), None), x, w, None)
    assert panels.linear(torch.zeros(0, 64), panels.pack(w), None).shape == (0, 32)


def test_kernel_refuses_what_it_cannot_pack_or_multiply(panels):
    with pytest.raises(RuntimeError, match="multiple of 16"):
        panels.pack(torch.zeros(40, 64))
    with pytest.raises(RuntimeError, match="float32 CPU weight"):
        panels.pack(torch.zeros(32, 64, dtype=torch.bfloat16))
    packed = panels.pack(torch.zeros(32, 64))
    with pytest.raises(RuntimeError, match="has 96 columns"):
        panels.linear(torch.zeros(2, 96), packed, None)
    with pytest.raises(RuntimeError, match="float32 CPU rows"):
        panels.linear(torch.zeros(2, 64, dtype=torch.bfloat16), packed, None)
    with pytest.raises(RuntimeError, match="bias of N values"):
        panels.linear(torch.zeros(2, 64), packed, torch.zeros(31))
    with pytest.raises(RuntimeError, match="packed by f32_pack"):
        panels.linear(torch.zeros(2, 64), torch.zeros(32, 64), None)


def test_packing_replaces_the_layers_that_fit_and_keeps_or_drops_their_plain_weights(panels):
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 40))  # 40: does not fit
    first = model[0].weight
    assert pack_linears_panels(model, panels, keep_plain=True) == 1
    assert isinstance(model[0], PanelPackedLinear) and isinstance(model[1], nn.Linear)
    assert model[0].weight is first  # the native decode steps stream this one
    x = torch.randn(2, 3, 64)  # 3-D rows keep their shape
    _close(model[0](x).reshape(6, 32), x.reshape(6, 64), first.detach(), model[0].bias)
    assert model[0](x).shape == (2, 3, 32)
    model[0].drop_plain()
    assert model[0].weight is None


def test_bf16_weights_are_widened_once(panels):
    linear = nn.Linear(64, 32).bfloat16()
    packed = PanelPackedLinear(linear, panels, keep_plain=False)
    assert packed.packed_weight.dtype == torch.float32 and packed.weight is None
    x = torch.randn(5, 64)
    _close(packed(x), x, linear.weight.detach().float(), linear.bias.detach().float())


@pytest.mark.skipif(cpu_capabilities().isa != "AVX2", reason="the panels are the plan on AVX2 only")
def test_float32_engine_on_an_avx2_cpu_packs_panels_and_says_so(panels, tiny_model_dir):
    described = LLM(str(tiny_model_dir)).engine.describe()  # max_num_seqs 64
    assert described["linear"] == "f32-panels"
    assert "AVX2 panel GEMM" in described["reason"] and "layers fit" in described["reason"]
    assert described["decode_layers"].startswith("native decode steps")
