"""Float32 weights laid out for the native GEMV of decode steps of 1-4 rows: GEMV blocks.

The GEMV reads 4 weight rows at a time (one load of each x vector feeds 4 rows). On plain rows
those are 4 runs of memory read side by side, each 3-12 KiB long for the reference model's
shapes, and the hardware prefetcher restarts on every new group of 4. In GEMV blocks,
``[N/4, K/8, 32]`` (the 4 rows interleaved 8 floats at a time), the same reads are one run: on
the AVX2 EPYC a pass over the reference model's weights ran 1.04-1.09x faster at 1 and 2
threads, where one row at a time (also one run, 8 accumulators) did not gain (docs/engine.md,
lever table). The sums are those of the plain rows, in the same order, bit for bit.

The blocks take the plain weight's own memory (rearranged in place, huge pages kept), so the
module's plain ``weight`` is released: only the native decode steps read it, and larger steps
and prefill read the packed copy. A weight another module shares (a tied head is the
embedding, read by rows) stays plain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BLOCK_ROWS = 4  # weight rows a block interleaves
BLOCK_LANES = 8  # floats of one row side by side (an AVX2 register)
K_MULTIPLE = 16  # the GEMV's 1-row loop takes 16 columns at a time, with no tail


@dataclass(frozen=True, kw_only=True, slots=True)
class GemvBlocks:
    """What was laid out in GEMV blocks, for the engine's start-up report."""

    layers: int
    bytes: int
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"gemv_weights": self.reason, "gemv_block_bytes": self.bytes}


def fits(weight: torch.Tensor) -> bool:
    """A float32 CPU matrix of whole blocks: rows a multiple of 4, columns of 16."""
    return (
        weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.is_contiguous()
        and weight.shape[0] % BLOCK_ROWS == 0
        and weight.shape[1] % K_MULTIPLE == 0
    )


def blocks_of(rows: torch.Tensor) -> torch.Tensor:
    """A new tensor: ``rows`` [N, K] as GEMV blocks [N/4, K/8, 32]."""
    n, k = rows.shape
    grouped = rows.reshape(n // BLOCK_ROWS, BLOCK_ROWS, k // BLOCK_LANES, BLOCK_LANES)
    return grouped.permute(0, 2, 1, 3).reshape(n // BLOCK_ROWS, k // BLOCK_LANES, -1).contiguous()


def rows_of(blocks: torch.Tensor) -> torch.Tensor:
    """A new tensor: GEMV blocks [N/4, K/8, 32] back as rows [N, K]."""
    nb, kb, _ = blocks.shape
    grouped = blocks.reshape(nb, kb, BLOCK_ROWS, BLOCK_LANES).permute(0, 2, 1, 3)
    return grouped.reshape(nb * BLOCK_ROWS, kb * BLOCK_LANES).contiguous()


def to_blocks_in_place(weight: torch.Tensor) -> torch.Tensor:
    """``weight``'s memory rewritten as its GEMV blocks; returns the blocks' view of it (the
    rows are gone: ``weight`` must not be read as rows afterwards). One matrix's copy at most
    is held beside the weights meanwhile."""
    with torch.no_grad():
        flat = weight.detach().view(-1)
        blocks = blocks_of(weight.detach())
        flat.copy_(blocks.view(-1))
    return flat.view(blocks.shape)


def gemv_weight(module: nn.Module) -> torch.Tensor | None:
    """The tensor the native GEMV reads for this linear: its GEMV blocks, or its plain weight."""
    blocks = getattr(module, "gemv_weight", None)
    return blocks if blocks is not None else getattr(module, "weight", None)


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters held by more than one module (a tied head and its embedding)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def block_gemv_weights(model: nn.Module) -> GemvBlocks:
    """Lay out every packed linear's plain float32 weight (kept for the native decode steps)
    in GEMV blocks, in place; the module keeps the blocks as ``gemv_weight``."""
    shared = _shared_weights(model)
    layers = moved = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not hasattr(module, "packed_weight") or weight is None:
            continue
        if id(weight) in shared or not fits(weight):
            continue
        blocks = to_blocks_in_place(weight)
        module.weight = None
        module.register_buffer("gemv_weight", blocks, persistent=False)
        layers, moved = layers + 1, moved + blocks.numel() * blocks.element_size()
    if not layers:
        return GemvBlocks(layers=0, bytes=0, reason="plain rows (no float32 weight fits blocks)")
    why = f"{layers} float32 linears in GEMV blocks of 4 rows (one read stream a thread)"
    return GemvBlocks(layers=layers, bytes=moved, reason=why)
