"""float32 linear layers on the engine's AVX2 FMA GEMM, beside the plain weight the native
decode steps stream.

On a CPU without AVX-512 or bf16 instructions (the AVX2 EPYC of docs/engine.md) the engine
computes in float32, and a decode step of 5 or more rows is its GEMMs. oneDNN's packed GEMM ran
the reference model's shapes at 64 rows at about 50% of the two cores' FMA peak; the engine's
panel GEMM (kernels/f32_panels.cpp) at about 61%: 1.23-1.29x oneDNN's at 64 rows, 1.6x at 8,
the same at 256 (benchmarks/f32_gemm.py). Each layer keeps its plain weight where the native
decode steps read it (1-4 rows) and one packed copy: two copies, as the oneDNN plan held.
"""

from __future__ import annotations

import torch
from torch import nn

from latlab.engine.kernels import LinearKernel
from latlab.engine.models.linears import replace_linears


def panels_fit(linear: nn.Linear) -> bool:
    """The kernel's panels: 16 output columns at a time (weights packed as float32)."""
    return linear.weight.is_floating_point() and linear.out_features % 16 == 0


class PanelPackedLinear(nn.Module):
    """Drop-in for an ``nn.Linear`` whose rows run on the panel GEMM in float32 (a bf16
    checkpoint's weights widened once, on a CPU without bf16 GEMMs)."""

    def __init__(self, linear: nn.Linear, kernel: LinearKernel, *, keep_plain: bool):
        super().__init__()
        with torch.no_grad():
            packed = kernel.pack(linear.weight.detach().float())
        self.register_buffer("packed_weight", packed, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().float().contiguous()
        self.register_buffer("bias", bias, persistent=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The plain weight, shared with the model (a tied head keeps the embedding's), for the
        # native decode steps; None when only the packed copy is kept.
        self.weight: nn.Parameter | None = linear.weight if keep_plain else None
        self._multiply = kernel.linear

    def drop_plain(self) -> None:
        """Release the plain weight (nothing reads it: no native decode steps here)."""
        self.weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        y = self._multiply(rows, self.packed_weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_linears_panels(model: nn.Module, kernel: LinearKernel, *, keep_plain: bool) -> int:
    """Replace every ``nn.Linear`` whose shape fits the panels; returns how many (the
    rest stay plain ``nn.Linear``)."""
    return replace_linears(
        model,
        lambda _, child: panels_fit(child),
        lambda child: PanelPackedLinear(child, kernel, keep_plain=keep_plain),
    )
