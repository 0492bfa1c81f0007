"""The AMX bf16 linear kernel (kernels/amx_linear.cpp) against float32 arithmetic on the same
bf16 values, at every row count its two tilings cover; what it refuses; how the engine packs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latlab.engine import LLM
from latlab.engine.kernels import amx_linear
from latlab.engine.models.amx_linear import AmxPackedLinear, pack_linears_amx

from ._reference import available_or_skip


@pytest.fixture(scope="module")
def amx():
    return available_or_skip(amx_linear)


def _within_bf16_rounding(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 sums in another order, then one rounding to bf16: a bf16 step or two at most."""
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert ((got.float() - want).abs() <= 2**-7 * want.abs() + 2e-2).all()


@pytest.mark.parametrize("rows", [1, 5, 16, 17, 64, 65, 130, 300])  # one block; block pairs
@pytest.mark.parametrize(("n", "k"), [(48, 64), (256, 768)])  # 48: an odd last column block
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_matches_float32_arithmetic(amx, rows, n, k, bias):
    gen = torch.Generator().manual_seed(rows * n + k)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16() if bias else None
    got = amx.linear(x, amx.pack(w), b)
    _within_bf16_rounding(got, F.linear(x.float(), w.float(), None if b is None else b.float()))


def test_kernel_refuses_what_it_cannot_tile(amx):
    with pytest.raises(RuntimeError, match="multiple of 16"):
        amx.pack(torch.zeros(40, 64, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="multiple of 16 and K of 32"):
        amx.pack(torch.zeros(32, 48, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="bf16 CPU weight"):
        amx.pack(torch.zeros(32, 64))
    packed = amx.pack(torch.zeros(32, 64, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="has 96 columns"):
        amx.linear(torch.zeros(2, 96, dtype=torch.bfloat16), packed, None)
    with pytest.raises(RuntimeError, match="bf16 CPU rows"):
        amx.linear(torch.zeros(2, 64), packed, None)
    with pytest.raises(RuntimeError, match="bias of N values"):
        amx.linear(torch.zeros(2, 64, dtype=torch.bfloat16), packed, torch.zeros(31).bfloat16())


def test_packing_replaces_the_layers_that_fit_and_keeps_their_plain_weights(amx):
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 40)).bfloat16()  # 40: does not fit
    first = model[0].weight
    assert pack_linears_amx(model, amx) == 1
    assert isinstance(model[0], AmxPackedLinear) and isinstance(model[1], nn.Linear)
    assert model[0].weight is first  # the native decode steps stream this one
    x = torch.randn(3, 64).bfloat16()
    _within_bf16_rounding(model[0](x), F.linear(x.float(), first.float(), model[0].bias.float()))


def test_bf16_engine_packs_for_amx_and_says_so(amx, tiny_model_dir):
    described = LLM(str(tiny_model_dir), dtype="bfloat16").engine.describe()
    assert described["linear"] == "amx-packed"
    assert "AMX tiles" in described["reason"] and "layers fit the tiles" in described["reason"]
    assert described["decode_layers"].startswith("native decode steps")
