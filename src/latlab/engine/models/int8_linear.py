"""int8 linear layers: a quarter of float32's weight bytes, a faster GEMM where the CPU has one.

Weights are stored once as int8 with one scale per output channel (symmetric, absmax / 127).
Two ways to run them, chosen by ``mode``:

- ``"int8"`` (W8A8): each step's activations are quantized too, one scale per token (row), and
  the product runs as an int8 GEMM. For bf16 models on a CPU with AMX-INT8 that is the
  engine's own AMX kernel (kernels/amx_int8.cpp: rows quantized symmetric int8, absmax / 127,
  as the weights; 1.5x the bf16 AMX kernel over the reference model's GEMMs at 64 rows), which
  the native batch decode step calls too, so both give the same numbers. Elsewhere fbgemm's
  AVX2/AVX-512/VNNI kernels on x86. fbgemm
  quantizes its input with one scale per tensor; dividing every row by its own absmax first
  makes that one scale fit every row, which is per-token quantization with fbgemm's kernel,
  and the rows are scaled back after. A single row (batch-1 decode) skips the division.
  Without VNNI/AMX, x86 multiplies uint8 by int8 with ``vpmaddubsw``, whose 16-bit pair sums
  saturate at full 8-bit range (measured: 0.13 relative error vs 0.016 with 7-bit activations
  on a 768x3072 layer), so there activations use 7 bits ("reduce_range"), elsewhere 8.
- ``"int8-weight-only"``: activations stay in floating point; the weights are widened inside
  the kernel (ATen's ``_weight_int8pack_mm`` on CPU, which runs bf16 activations).

Where neither kernel exists (no fbgemm, CUDA) the module dequantizes the weight and runs a
plain matmul: the same numbers, without the speed. ``kernel`` names what each layer runs.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from latlab.engine.hardware import cpu_capabilities
from latlab.engine.kernels import AmxInt8
from latlab.engine.models.linears import replace_linears

MODES = ("int8", "int8-weight-only")
_EPS = 1e-8


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weight [out, in] and float32 scale [out] with weight ~= q * scale[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=_EPS) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def fbgemm_ready() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def int8pack_ready() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """Drop-in for an ``nn.Linear`` with int8 weights (see the module docstring). ``amx``: the
    AMX int8 kernel, used for W8A8 on bf16 weights whose shape fits its tiles."""

    def __init__(self, linear: nn.Linear, mode: str, amx: AmxInt8 | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.mode = mode
        q, scale = quantize_per_channel(linear.weight)
        device = linear.weight.device
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias, persistent=False)
        self.kernel = _pick_kernel(mode, device, linear, amx)
        self.reduce_range = cpu_capabilities().int8_dot not in ("vnni", "amx")
        self._packed = None
        self._amx = amx if self.kernel == "amx-int8" else None
        bias_bf16 = None if self._amx is None or bias is None else bias.to(torch.bfloat16)
        self.register_buffer("bias_bf16", bias_bf16, persistent=False)  # the AMX kernel's
        if self._amx is not None:
            q = self._amx.pack(q)  # [N/16, K/64, 16, 64]: the only copy the kernel reads
        if self.kernel == "fbgemm":
            self._packed = _fbgemm_pack(q, scale)
            q = torch.empty(0, dtype=torch.int8)  # the packed copy is all the kernel reads
        self.register_buffer("qweight", q, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self._amx is not None:
            x2 = x2.to(torch.bfloat16).contiguous()
            y = self._amx.linear(x2, self.qweight, self.scale, self.bias_bf16)
            return y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        if self.kernel == "fbgemm":
            y = self._fbgemm(x2)
        elif self.kernel == "int8pack":
            y = torch.ops.aten._weight_int8pack_mm(
                x2.to(torch.bfloat16), self.qweight, self.scale_bf16
            )
        else:
            w = self.qweight.to(x.dtype) * self.scale[:, None].to(x.dtype)
            y = F.linear(x2, w)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _fbgemm(self, x: torch.Tensor) -> torch.Tensor:
        x, reduce = x.float(), self.reduce_range
        if x.shape[0] == 1:  # one row: per-tensor is per-token already
            return torch.ops.quantized.linear_dynamic(x, self._packed, reduce)
        amax = x.abs().amax(dim=1, keepdim=True).clamp_(min=_EPS)
        return torch.ops.quantized.linear_dynamic(x / amax, self._packed, reduce).mul_(amax)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, mode={self.mode}, kernel={self.kernel}"


def amx_int8_fits(linear: nn.Linear) -> bool:
    """The AMX int8 kernel's shapes: bf16 activations, 16 outputs and 64 inputs at a time."""
    w = linear.weight
    return w.dtype == torch.bfloat16 and w.shape[0] % 16 == 0 and w.shape[1] % 64 == 0


def _pick_kernel(mode: str, device: torch.device, linear: nn.Linear, amx: AmxInt8 | None) -> str:
    if device.type != "cpu":
        return "dequant"
    if mode == "int8" and amx is not None and amx_int8_fits(linear):
        return "amx-int8"
    if mode == "int8" and fbgemm_ready():
        return "fbgemm"
    if mode == "int8-weight-only" and int8pack_ready():
        return "int8pack"
    return "dequant"


def _fbgemm_pack(q: torch.Tensor, scale: torch.Tensor):  # type: ignore[no-untyped-def]
    """fbgemm's packed weight (torch's quantized-tensor API, deprecated but in torch 2.13)."""
    zeros = torch.zeros(scale.shape, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "quantized tensor creation ... deprecated"
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
        return torch.ops.quantized.linear_prepack(qweight, None)


def quantize_linears(
    model: nn.Module,
    mode: str,
    *,
    skip: tuple[str, ...] = ("lm_head",),
    amx: AmxInt8 | None = None,
) -> int:
    """Replace every ``nn.Linear`` under ``model`` (except names in ``skip``) by an Int8Linear
    (``amx``: the AMX int8 kernel for the layers it fits).

    The output head stays in floating point by default: it decides the sampled token directly,
    and its bytes are a small share of a decoder's.
    """
    return replace_linears(
        model, lambda name, _: name not in skip, lambda child: Int8Linear(child, mode, amx)
    )


def kernels_in(model: nn.Module) -> list[str]:
    """The distinct int8 kernels the model's layers run (for the engine's start-up report)."""
    return sorted({m.kernel for m in model.modules() if isinstance(m, Int8Linear)})
