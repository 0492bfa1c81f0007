"""The AMX int8 linear kernel (kernels/amx_int8.cpp): per-row symmetric int8 activations times
per-channel int8 weights equal the same quantization done in float64, at every row count; what
it refuses; which int8 layers use it, and the W8A8 engine's report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latlab.engine import LLM
from latlab.engine.kernels import amx_int8
from latlab.engine.models.int8_linear import Int8Linear, quantize_per_channel

from ._reference import available_or_skip


@pytest.fixture(scope="module")
def kernel():
    return available_or_skip(amx_int8)


def _quantized_reference(x, q, scale, bias):
    """Rows times 127 / absmax in float32 (the kernel's own arithmetic, so values near a
    rounding boundary land alike), rounded half to even; exact products and sums after."""
    xf = x.float()
    amax = xf.abs().amax(dim=1).clamp(min=1e-8)
    inv = torch.full_like(amax, 127.0) / amax  # a true division (127 / t multiplies by 1 / t)
    xq = torch.round(xf * inv[:, None]).clamp(-127, 127).double()
    y = (xq @ q.double().T) * (amax / 127).double()[:, None] * scale.double()[None, :]
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("rows", [1, 5, 16, 17, 64, 65, 130])  # row tiles 1-4, then again
@pytest.mark.parametrize(("n", "k"), [(48, 64), (256, 768)])
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_matches_the_same_quantization_in_float64(kernel, rows, n, k, bias):
    gen = torch.Generator().manual_seed(rows * n + k)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    x[0, 3] = 40.0  # an outlier: the row's scale follows its absmax
    q, scale = quantize_per_channel(torch.randn(n, k, generator=gen))
    b = torch.randn(n, generator=gen).bfloat16() if bias else None
    got = kernel.linear(x, kernel.pack(q), scale, b)
    want = _quantized_reference(x, q, scale, b)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
    assert ((got.double() - want).abs() <= 2**-7 * want.abs() + 1e-2).all()  # one bf16 rounding


def test_a_zero_row_gives_zeros(kernel):
    q, scale = quantize_per_channel(torch.randn(32, 64))
    got = kernel.linear(torch.zeros(3, 64).bfloat16(), kernel.pack(q), scale, None)
    assert torch.equal(got, torch.zeros(3, 32).bfloat16())


def test_kernel_refuses_what_it_cannot_tile(kernel):
    q, scale = quantize_per_channel(torch.randn(32, 64))
    with pytest.raises(RuntimeError, match="multiple of 16 and K of 64"):
        kernel.pack(torch.zeros(32, 96, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="int8 CPU weight"):
        kernel.pack(torch.zeros(32, 64))
    packed = kernel.pack(q)
    with pytest.raises(RuntimeError, match="columns"):
        kernel.linear(torch.zeros(2, 128).bfloat16(), packed, scale, None)
    with pytest.raises(RuntimeError, match="bf16 CPU rows"):
        kernel.linear(torch.zeros(2, 64), packed, scale, None)
    with pytest.raises(RuntimeError, match="scale per output channel"):
        kernel.linear(torch.zeros(2, 64).bfloat16(), packed, scale[:16], None)


def test_w8a8_layers_of_bf16_weights_run_on_it(kernel):
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(128, 64, bias=True).bfloat16()
    layer = Int8Linear(linear, "int8", kernel)
    assert layer.kernel == "amx-int8" and layer.qweight.dim() == 4  # only the packed copy
    x = torch.randn(2, 3, 128, generator=gen).bfloat16()
    q, scale = quantize_per_channel(linear.weight)
    want = _quantized_reference(x.view(6, 128), q, scale, linear.bias.detach().bfloat16())
    got = layer(x)
    assert got.shape == (2, 3, 64)
    assert ((got.view(6, 64).double() - want).abs() <= 2**-7 * want.abs() + 1e-2).all()
    assert Int8Linear(linear.float(), "int8", kernel).kernel != "amx-int8"  # float32: not bf16
    assert Int8Linear(nn.Linear(96, 64).bfloat16(), "int8", kernel).kernel != "amx-int8"  # K 96
    assert Int8Linear(linear, "int8-weight-only", kernel).kernel != "amx-int8"


def test_a_w8a8_bf16_engine_says_it_runs_amx_int8(kernel, tiny_model_dir):
    plan = LLM(str(tiny_model_dir), dtype="bfloat16", quantization="int8").engine.describe()
    assert plan["linear"] == "int8"
    assert "kernel: amx-int8; head packed for AMX tiles" in plan["reason"]
