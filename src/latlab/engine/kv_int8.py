"""The int8 KV cache: 8-bit values with one float32 scale per row (token, KV head).

A row's scale is its absmax / 127 and its values are ``x / scale`` rounded to nearest even, so
each row keeps ~7 bits relative to its own largest entry, where fp8 e5m2 keeps 2 mantissa bits
per value. Per (token, head) scales need no calibration; LMDeploy's int8 cache and KIVI keep
scales at this grain too.

The scales live in the cache tensor's own storage, right after its values (the contract in
kernels/kernels.h), so every path that is handed a layer's ``(k_cache, v_cache)`` pair, native
or torch, finds them without another tensor to pass: :func:`zeros` allocates that layout and
:func:`row_scales` views it. The native kernels quantize with the same float32 arithmetic
(rows.h's ``store_kv_row``), so both paths write the same bytes for the same float32 rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from latlab.errors import ConfigError

SCALE_BYTES = 4  # a float32 scale per row


def storage_bytes(shape: tuple[int, ...]) -> int:
    """Bytes an int8 cache of ``shape`` [NB, KVH, BS, D] takes with its row scales."""
    values = math.prod(shape)
    return values + values // shape[-1] * SCALE_BYTES


def zeros(
    count: int,
    shape: tuple[int, ...],
    device: torch.device,
    allocate: Callable[[int, tuple[int, ...], torch.dtype], list[torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """``count`` zeroed int8 caches of ``shape``, each with its scales after its values.
    ``allocate(count, (nbytes,), torch.int8)`` gives the flat regions (huge pages); default
    plain ``torch.zeros``."""
    if shape[-1] % SCALE_BYTES:  # the scales must start on a float32 boundary
        raise ConfigError(
            f"kv_cache_dtype='int8' needs a head size divisible by 4; this model's is "
            f"{shape[-1]} (use kv_cache_dtype='auto' or 'fp8_e5m2')"
        )
    nbytes = storage_bytes(shape)
    if allocate is None:
        flat = [torch.zeros(nbytes, dtype=torch.int8, device=device) for _ in range(count)]
    else:
        flat = allocate(count, (nbytes,), torch.int8)
    return [region[: math.prod(shape)].view(shape) for region in flat]


def row_scales(cache: torch.Tensor) -> torch.Tensor:
    """The scales [NB, KVH, BS] float32 of an int8 cache from :func:`zeros` (a view: writing
    it writes the cache's scales)."""
    rows = cache.numel() // cache.shape[-1]
    start = cache.storage_offset() + cache.numel()
    if cache.dtype != torch.int8 or cache.untyped_storage().nbytes() < start + rows * SCALE_BYTES:
        raise ValueError("not an int8 KV cache with row scales (allocate it with kv_int8.zeros)")
    flat = torch.empty(0, dtype=torch.int8, device=cache.device)
    flat.set_(cache.untyped_storage(), start, (rows * SCALE_BYTES,))
    return flat.view(torch.float32).view(cache.shape[:-1])


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x`` [..., D] as int8 values and float32 scales [...]: absmax / 127, rounded
    half to even; a zero row is zeros with scale 0."""
    x = x.float()
    scale = x.abs().amax(dim=-1) / 127
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(-1)
    values = torch.round(x / divisor).clamp_(-127, 127).to(torch.int8)
    return values, scale


def write(
    cache: torch.Tensor, blocks: torch.Tensor, offsets: torch.Tensor, x: torch.Tensor
) -> None:
    """Write new rows ``x`` [N, KVH, D] at (block, :, offset) of an int8 cache, scales too."""
    values, scale = quantize(x)
    cache[blocks, :, offsets] = values
    row_scales(cache)[blocks, :, offsets] = scale


def dequantize(values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Gathered int8 values [..., D] times their row scales [..., 1], in ``dtype``."""
    return (values.float() * scales).to(dtype)
