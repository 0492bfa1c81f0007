"""Float32 weights laid out for the native GEMV of decode steps of 1-4 rows: GEMV blocks.

The GEMV reads 4 weight rows at a time (one load of each x vector feeds 4 rows): on plain rows,
4 runs of memory read side by side. Where a row is short (the reference model's 768 columns are
3 KiB) each run ends before the hardware prefetcher has got far ahead, and it starts over on the
next group of 4. In GEMV blocks, ``[N/4, K/8, 32]`` (the 4 rows interleaved 8 floats at a time),
the same reads are one run. On the AVX2 EPYC, 2 threads, 12 weights a shape in huge pages: rows
of 2 KiB read 1.41x faster as blocks, 3 KiB 1.12-1.20x, 4-5 KiB 0.97x, 6-24 KiB 0.84-0.95x
(there 4 long runs keep more reads in flight than one). So only matrices whose rows are shorter
than 4 KiB are laid out; the rest stay rows (docs/engine.md, lever table). The sums are those
of the plain rows, in the same order, bit for bit.

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
MAX_ROW_BYTES = 4096  # rows this long or longer read faster as rows (measured, above)


@dataclass(frozen=True, kw_only=True, slots=True)
class GemvBlocks:
    """What was laid out in GEMV blocks, for the engine's start-up report."""

    layers: int
    bytes: int
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {"gemv_weights": self.reason, "gemv_block_bytes": self.bytes}


def fits(weight: torch.Tensor) -> bool:
    """A float32 CPU matrix of whole blocks (rows a multiple of 4, columns of 16) whose rows are
    shorter than 4 KiB."""
    return (
        weight.dtype == torch.float32
        and weight.shape[-1] * weight.element_size() < MAX_ROW_BYTES
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
    """Lay out the plain float32 weights packed linears keep for the native decode steps in
    GEMV blocks, in place, where they fit; such a module keeps the blocks as ``gemv_weight``."""
    shared = _shared_weights(model)
    layers = rows = moved = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not hasattr(module, "packed_weight") or weight is None or id(weight) in shared:
            continue
        if not fits(weight):
            rows += 1
            continue
        blocks = to_blocks_in_place(weight)
        module.weight = None
        module.register_buffer("gemv_weight", blocks, persistent=False)
        layers, moved = layers + 1, moved + blocks.numel() * blocks.element_size()
    kept = f"; {rows} kept as rows (4 KiB rows or longer, or not float32)" if rows else ""
    if not layers:
        return GemvBlocks(layers=0, bytes=0, reason=f"plain rows (none fits GEMV blocks){kept}")
    why = f"{layers} float32 linears in GEMV blocks of 4 rows (one read stream a thread){kept}"
    return GemvBlocks(layers=layers, bytes=moved, reason=why)
