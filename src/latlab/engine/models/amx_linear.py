"""bf16 linear layers on AMX tiles, beside the plain weight the native decode steps stream.

On a Xeon with AMX a bf16 decode step at batch 64 is bound by reading the weights; the engine's
AMX kernel (kernels/amx_linear.cpp) streamed the reference model's weights 1.23x faster than
oneDNN's packed GEMM at 8-64 rows and 1.15x at 128, about as fast at 384-1024 (prefill), and
0.87-0.95x at 192-256 rows; always at least plain ``F.linear``'s speed (docs/engine.md). Each
layer keeps its plain weight (the native decode steps read it at 1-4 rows) and one AMX-packed
copy: two copies, as the oneDNN plan held.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latlab.engine.kernels import AmxLinear as AmxKernel
from latlab.engine.models.linears import replace_linears


def amx_fits(linear: nn.Linear) -> bool:
    """The kernel's tile shapes: 16 output columns and 32 inputs at a time, bf16."""
    return (
        linear.weight.dtype == torch.bfloat16
        and linear.out_features % 16 == 0
        and linear.in_features % 32 == 0
    )


class AmxPackedLinear(nn.Module):
    """Drop-in for a bf16 ``nn.Linear`` whose 2-D inputs run on AMX tiles."""

    def __init__(self, linear: nn.Linear, kernel: AmxKernel):
        super().__init__()
        self.weight = linear.weight  # shared with the model (a tied head keeps the embedding's)
        self.bias = linear.bias
        with torch.no_grad():
            packed = kernel.pack(linear.weight.detach())
        self.register_buffer("packed_weight", packed, persistent=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._multiply = kernel.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self._multiply(x, self.packed_weight, self.bias)
        return F.linear(x, self.weight, self.bias)  # the engine passes rows; others may not


def pack_linears_amx(model: nn.Module, kernel: AmxKernel) -> int:
    """Replace every bf16 ``nn.Linear`` whose shape fits the tiles; returns how many (the rest
    stay plain ``nn.Linear``)."""
    return replace_linears(
        model, lambda _, child: amx_fits(child), lambda child: AmxPackedLinear(child, kernel)
    )
