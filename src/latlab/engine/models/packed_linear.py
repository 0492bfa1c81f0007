"""oneDNN-prepacked linear layers for CPU: weights reordered once into the GEMM's own layout.

On a CPU with bf16 instructions, ``F.linear`` on bf16 tensors read the weights at about 40% of
memory bandwidth at batch 1; the same GEMM on weights reordered once into oneDNN's blocked
layout ran about 2.5x faster at batch 1 and 1.4x at batch 64, bit-identical (docs/engine.md).
On an AVX2-only CPU oneDNN cannot run bf16 at all, and the engine packs float32 copies
instead (``dtype``): 1.1-1.3x over ``F.linear`` at batch 64, though not bit-identical to it.

A float32 engine keeps the plain weight beside the packed copy (``keep_plain``): its native
decode layers stream the plain rows at 1-4 rows, where they beat any GEMM, and oneDNN's packed
GEMM takes the larger batches (1.47x the decode throughput of plain ``F.linear`` at batch 64 on
the AVX2 EPYC, docs/engine.md). It costs a second copy of the linear weights.
"""

from __future__ import annotations

import torch
from torch import nn

from latlab.engine.models.linears import linear_children


def onednn_available() -> bool:
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN can pack and run a linear layer of ``dtype`` on this CPU.

    The ops exist in every x86 build, but the bf16 path needs AVX-512 (BW/VL/DQ) or
    AVX-NE-CONVERT: on an AVX2-only CPU packing bf16 raises, and the engine runs plain linears.
    """
    if not onednn_available():
        return False
    return pack_linears(nn.Sequential(nn.Linear(16, 16, dtype=dtype)), batch_hint=1) > 0


class PackedLinear(nn.Module):
    """Drop-in for an ``nn.Linear`` whose weight was reordered for oneDNN."""

    def __init__(
        self,
        linear: nn.Linear,
        batch_hint: int,
        dtype: torch.dtype | None = None,
        *,
        keep_plain: bool = False,
    ):
        super().__init__()
        dtype = dtype or linear.weight.dtype
        with torch.no_grad():
            weight = linear.weight.detach().to(dtype)
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)
        self.register_buffer("packed_weight", packed, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        self.register_buffer("bias", bias, persistent=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The plain weight, shared with the model (a tied head keeps the embedding's), for the
        # native decode steps; None when only the packed copy is kept.
        self.weight: nn.Parameter | None = linear.weight if keep_plain else None

    def drop_plain(self) -> None:
        """Release the plain weight (nothing reads it: no native decode steps here)."""
        self.weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def pack_linears(
    model: nn.Module,
    batch_hint: int,
    dtype: torch.dtype | None = None,
    *,
    keep_plain: bool = False,
) -> int:
    """Replace every ``nn.Linear`` under ``model`` by a PackedLinear; returns how many.

    ``dtype``: pack copies in this dtype (default: each weight's own); ``keep_plain``: keep the
    plain weights too (PackedLinear.weight). All or nothing: if oneDNN cannot pack or run the
    dtype on this CPU (bf16 without AVX-512), the model is left untouched and 0 is returned.
    """
    targets = linear_children(model, lambda _, child: True)
    try:
        packed = []
        for parent, name, child in targets:
            module = PackedLinear(child, batch_hint, dtype, keep_plain=keep_plain)
            probe = torch.zeros(1, child.in_features, dtype=dtype or child.weight.dtype)
            module(probe)  # fails here, not in the first real step, if unsupported
            packed.append((parent, name, module))
    except RuntimeError:
        return 0
    for parent, name, module in packed:
        setattr(parent, name, module)
    return len(packed)


def drop_plain_weights(model: nn.Module) -> int:
    """Release every packed layer's plain weight (oneDNN's or the panel GEMM's); returns how
    many were held."""
    held = [m for m in model.modules() if hasattr(m, "drop_plain") and m.weight is not None]
    for module in held:
        module.drop_plain()
    return len(held)
