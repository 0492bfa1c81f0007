"""Weights and the KV cache in transparent huge pages (CPU): fewer TLB misses as steps read them.

A batch-1 decode step reads every weight once, hundreds of MB in 4 KiB pages by default: one
TLB miss and page walk every 4 KiB. On the AVX2 EPYC of docs/engine.md a streaming read of a
buffer madvise'd for 2 MiB pages ran 1.11x faster than the same read on 4 KiB pages (one
thread; 1.13x with two), and the engine's batch-1 step gained with it (lever table). Linux
hands out huge pages for such a region when ``transparent_hugepage/enabled`` is ``always`` or
``madvise``; with ``never`` (or off Linux) the weights stay where they are and the engine says
so. Only contiguous tensors of at least 2 MiB move (small ones would waste the alignment).

The KV cache is allocated there too. Decode attention reads each sequence's blocks wherever the
block manager put them (2 KiB blocks scattered over a cache of GBs): with 4 KiB pages nearly
every block costs a TLB miss. The cold attention of 12 layers at batch 64 over scattered blocks
ran 1.28-1.33x faster on a huge-page cache at 26-1,024 tokens of context; a fresh engine's
batch-64 step, whose blocks are still in order, 1.04-1.06x (docs/engine.md, session 13).
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

HUGE_PAGE = 2 << 20
PAGE = 4096
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@dataclass(kw_only=True, slots=True, frozen=True)
class HugePages:
    """What was moved into huge-page memory, and why (the engine's start-up report)."""

    moved_bytes: int
    reason: str
    available: bool = True  # False: the kernel (or the platform) gives no huge pages here

    def as_dict(self) -> dict[str, object]:
        return {"huge_page_bytes": self.moved_bytes, "huge_pages": self.reason}


def thp_mode(path: Path = THP_SETTING) -> str:
    """The kernel's transparent huge page mode: always, madvise, never, or unavailable."""
    try:
        text = path.read_text()
    except OSError:
        return "unavailable"
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else "unavailable"


def _large_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Distinct (tied weights once) contiguous CPU tensors of at least one huge page."""
    seen: set[int] = set()
    found = []
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor is None or id(tensor) in seen or tensor.device.type != "cpu":
            continue
        seen.add(id(tensor))
        big = tensor.numel() * tensor.element_size() >= HUGE_PAGE
        if big and tensor.layout == torch.strided and tensor.is_contiguous():
            found.append(tensor)
    return found


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def huge_pages_allowed(mode: str) -> bool:
    """Whether memory madvise'd for huge pages gets them under this THP mode (and platform)."""
    return mode in ("always", "madvise") and hasattr(mmap, "MADV_HUGEPAGE")


def huge_page_arena(nbytes: int) -> torch.Tensor:
    """``nbytes`` (rounded up to whole huge pages) of zeroed uint8 memory madvise'd for huge
    pages; the tensor keeps the mapping alive. Pages are given on first touch."""
    # private anonymous memory: shared mappings are shmem, whose huge pages follow another knob
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    arena = mmap.mmap(-1, _round_up(max(nbytes, 1), HUGE_PAGE), flags=flags)
    arena.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(arena, dtype=torch.uint8)


def move_to_huge_pages(model: nn.Module, *, mode: str | None = None) -> HugePages:
    """Copy the model's large tensors into one region madvise'd for huge pages (in place:
    ``tensor.data`` is swapped, so modules and tied weights keep working)."""
    mode = thp_mode() if mode is None else mode
    if not huge_pages_allowed(mode):
        why = f"off: transparent huge pages {mode} here"
        return HugePages(moved_bytes=0, reason=why, available=False)
    tensors = _large_tensors(model)
    sizes = [t.numel() * t.element_size() for t in tensors]
    total = sum(_round_up(n, PAGE) for n in sizes)
    if not total:
        return HugePages(moved_bytes=0, reason="off: no tensor of 2 MiB or more")
    base = huge_page_arena(total)
    offset = 0
    with torch.no_grad():
        for tensor, n in zip(tensors, sizes, strict=True):
            view = base[offset : offset + n].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor)
            tensor.data = view
            offset += _round_up(n, PAGE)
    why = f"{len(tensors)} weight tensors in memory madvise'd for 2 MiB pages (THP {mode})"
    return HugePages(moved_bytes=offset, reason=why)


def zeros_in_huge_pages(
    count: int, shape: tuple[int, ...], dtype: torch.dtype
) -> list[torch.Tensor]:
    """``count`` zeroed tensors of ``shape`` and ``dtype``, side by side in one huge-page arena
    (the KV caches), every page touched here so the memory is held from the start as
    ``torch.zeros`` holds it, not faulted in during decode steps."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    stride = _round_up(nbytes, PAGE)
    base = huge_page_arena(count * stride)
    base.zero_()  # anonymous memory is zero already: this takes its pages now
    return [base[i * stride : i * stride + nbytes].view(dtype).view(shape) for i in range(count)]
