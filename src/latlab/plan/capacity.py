"""How much KV cache a device holds, and what that means in sequences and context length.

Budget per rank = device memory x utilization - weights on that rank - reserve, the way
vLLM sizes its cache (the reserve stands for activations, the CUDA graph pool and runtime).
The budget is cut into whole blocks; a sequence holds whole blocks in every layer, fewer in
sliding-window layers once it is longer than the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latlab.errors import CapacityError, ConfigError
from latlab.plan.kv import kv_bytes_per_sequence, kv_bytes_per_token, num_blocks
from latlab.plan.units import format_bytes

# Contexts searched when a config gives no max_position_embeddings.
_UNBOUNDED_CONTEXT = 1 << 30


@dataclass(slots=True)
class Capacity:
    """What a KV budget holds: blocks, tokens, sequences at a context, context at a load."""

    kv_budget_bytes: int
    block_size: int
    kv_bytes_per_token: int
    kv_bytes_per_block: int
    num_blocks: int
    kv_tokens: int
    context: int | None = None
    kv_bytes_per_sequence: int | None = None
    max_concurrency: int | None = None
    concurrency: int | None = None
    max_context: int | None = None
    max_context_limited_by: str | None = None


def kv_budget_bytes(
    memory_bytes: int, utilization: float, weights_bytes: int, reserve_bytes: int
) -> int:
    """Bytes left for the KV cache on one rank; CapacityError when the weights do not fit."""
    if not 0 < utilization <= 1:
        raise ConfigError(
            f"memory utilization must be in (0, 1], got {utilization}: it is the fraction "
            "of device memory the engine may use"
        )
    if reserve_bytes < 0:
        raise ConfigError(f"reserve must not be negative, got {reserve_bytes}")
    usable = int(memory_bytes * utilization)
    budget = usable - weights_bytes - reserve_bytes
    if budget <= 0:
        raise CapacityError(
            f"the weights ({format_bytes(weights_bytes)} per device) plus the reserve "
            f"({format_bytes(reserve_bytes)}) do not leave room for any KV cache in "
            f"{format_bytes(usable)} ({utilization:g} of {format_bytes(memory_bytes)}); "
            "use a larger device, more tensor-parallel ranks, a smaller weight dtype "
            "or a smaller reserve"
        )
    return budget


def compute_capacity(
    config: Mapping[str, Any],
    budget_bytes: int,
    *,
    kv_dtype: str = "bf16",
    tp: int = 1,
    block_size: int = 16,
    kv_scales: str = "tensor",
    context: int | None = None,
    concurrency: int | None = None,
) -> Capacity:
    """Blocks and tokens in ``budget_bytes``; sequences at ``context``; context at ``concurrency``.

    Raises CapacityError, saying by how much, when one sequence of ``context`` tokens or
    ``concurrency`` sequences of even one token cannot fit.
    """
    per_token = kv_bytes_per_token(config, kv_dtype, tp, kv_scales=kv_scales)
    blocks = num_blocks(budget_bytes, block_size, per_token)
    if blocks == 0:
        raise CapacityError(
            f"the KV budget of {format_bytes(budget_bytes)} holds no block of {block_size:,} "
            f"tokens ({format_bytes(per_token * block_size)} each); use a smaller block size "
            "or more memory"
        )
    cap = Capacity(
        kv_budget_bytes=int(budget_bytes),
        block_size=block_size,
        kv_bytes_per_token=per_token,
        kv_bytes_per_block=per_token * block_size,
        num_blocks=blocks,
        kv_tokens=blocks * block_size,
    )

    def seq_bytes(length: int) -> int:
        return kv_bytes_per_sequence(config, length, kv_dtype, tp, block_size, kv_scales=kv_scales)

    if context is not None:
        if context < 1:
            raise ConfigError(f"context must be at least 1 token, got {context}")
        cap.context = context
        cap.kv_bytes_per_sequence = seq_bytes(context)
        cap.max_concurrency = budget_bytes // cap.kv_bytes_per_sequence
        if cap.max_concurrency == 0:
            longest = _longest_context(seq_bytes, 1, budget_bytes, _UNBOUNDED_CONTEXT)
            raise CapacityError(
                f"a context of {context:,} tokens does not fit even once: one sequence needs "
                f"{format_bytes(cap.kv_bytes_per_sequence)} of KV cache but the budget is "
                f"{format_bytes(budget_bytes)}; the longest context that fits is "
                f"{longest:,} tokens"
            )
    if concurrency is not None:
        _fill_concurrency(cap, config, concurrency, seq_bytes)
    return cap


def _fill_concurrency(
    cap: Capacity, config: Mapping[str, Any], concurrency: int, seq_bytes: Any
) -> None:
    """The longest context ``concurrency`` sequences fit in ``cap``'s budget, and its limit."""
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1 sequence, got {concurrency}")
    cap.concurrency = concurrency
    budget_bytes = cap.kv_budget_bytes
    model_max = int(config.get("max_position_embeddings") or _UNBOUNDED_CONTEXT)
    if concurrency * seq_bytes(1) > budget_bytes:
        raise CapacityError(
            f"{concurrency:,} concurrent sequences do not fit even at 1 token each: the "
            f"KV budget of {format_bytes(budget_bytes)} holds {cap.num_blocks:,} blocks of "
            f"{cap.block_size} tokens"
        )
    longest = _longest_context(seq_bytes, concurrency, budget_bytes, model_max)
    cap.max_context = longest
    cap.max_context_limited_by = "model" if longest == model_max else "memory"


def _longest_context(seq_bytes, concurrency: int, budget: int, upper: int) -> int:
    """Largest length L <= upper with concurrency x seq_bytes(L) <= budget (bisection).

    seq_bytes never decreases with L, so the feasible lengths form a prefix.
    """
    low, high = 1, upper
    if concurrency * seq_bytes(1) > budget:
        return 0
    if concurrency * seq_bytes(high) <= budget:
        return high
    while low < high:
        mid = (low + high + 1) // 2
        if concurrency * seq_bytes(mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return low
