"""``plan_memory``: weights, KV cache and capacity for one model on one device, in one record."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from latlab.errors import ConfigError
from latlab.plan.capacity import compute_capacity, kv_budget_bytes
from latlab.plan.catalog import get_device, resolve_model
from latlab.plan.kv import (
    check_tensor_parallel,
    head_dim,
    is_mla,
    kv_bytes_per_sequence,
    kv_bytes_per_token,
    kv_bytes_per_token_layer,
    kv_dtype_bytes,
    kv_heads_per_rank,
    layer_windows,
    num_kv_heads,
)
from latlab.plan.memory_plan import MemoryPlan
from latlab.plan.units import parse_bytes
from latlab.plan.weights import count_parameters, normalize_weight_dtype, weight_bytes

DEFAULT_RESERVE = "2GiB"
_FLOAT_DTYPES = ("fp32", "bf16", "fp16")


def plan_memory(
    model: str | os.PathLike[str] | Mapping[str, Any],
    *,
    device: str | None = None,
    memory: str | int | None = None,
    gpu_memory_utilization: float = 0.9,
    reserve: str | int = DEFAULT_RESERVE,
    kv_cache_bytes: str | int | None = None,
    weight_dtype: str = "bf16",
    weight_group_size: int | None = None,
    kv_dtype: str = "auto",
    kv_scales: str = "tensor",
    context: int | None = None,
    concurrency: int | None = None,
    tp: int = 1,
    block_size: int = 16,
) -> MemoryPlan:
    """Plan weights, KV cache and capacity for ``model`` (catalog name, path or config dict).

    The KV budget per rank is ``kv_cache_bytes`` when given (what an engine is told to use,
    e.g. vLLM CPU's VLLM_CPU_KVCACHE_SPACE), else device memory (``device`` from the catalog
    or ``memory`` such as "24GiB") x ``gpu_memory_utilization`` - weights per rank -
    ``reserve``. ``kv_dtype="auto"`` caches in the weight dtype (bf16 for quantized weights).
    Raises ConfigError for bad input and CapacityError when a request cannot fit.
    """
    for name, value in (("context", context), ("concurrency", concurrency)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    spec = resolve_model(model)
    config = spec.config
    check_tensor_parallel(config, tp)
    weight_dtype = normalize_weight_dtype(weight_dtype)
    kv_dtype = _resolve_kv_dtype(kv_dtype, weight_dtype)
    breakdown = count_parameters(config)
    weights = weight_bytes(breakdown, weight_dtype, weight_group_size, tp)
    plan = _base_plan(spec.name, spec.source, config, breakdown, weights, kv_dtype, kv_scales)
    if block_size < 1:
        raise ConfigError(f"block size must be a positive number of tokens, got {block_size}")
    plan.tp, plan.block_size = tp, block_size
    if not is_mla(config):
        plan.kv_heads_per_rank = kv_heads_per_rank(config, tp)
    plan.kv_bytes_per_token_layer = kv_bytes_per_token_layer(
        config, kv_dtype, tp, kv_scales=kv_scales
    )
    plan.kv_bytes_per_token = kv_bytes_per_token(config, kv_dtype, tp, kv_scales=kv_scales)
    plan.kv_bytes_per_block = plan.kv_bytes_per_token * block_size
    budget = _budget(plan, device, memory, gpu_memory_utilization, reserve, kv_cache_bytes)
    if (
        context is not None
        and plan.max_position_embeddings
        and (context > plan.max_position_embeddings)
    ):
        plan.warnings.append(
            f"context {context:,} is longer than the model's max_position_embeddings "
            f"{plan.max_position_embeddings:,}"
        )
    if budget is None:
        if context is not None:
            plan.context = context
            plan.kv_bytes_per_sequence = kv_bytes_per_sequence(
                config, context, kv_dtype, tp, block_size, kv_scales=kv_scales
            )
        return plan
    cap = compute_capacity(
        config,
        budget,
        kv_dtype=kv_dtype,
        tp=tp,
        block_size=block_size,
        kv_scales=kv_scales,
        context=context,
        concurrency=concurrency,
    )
    plan.kv_budget_bytes, plan.num_blocks, plan.kv_tokens = budget, cap.num_blocks, cap.kv_tokens
    plan.context, plan.kv_bytes_per_sequence = cap.context, cap.kv_bytes_per_sequence
    plan.max_concurrency, plan.concurrency = cap.max_concurrency, cap.concurrency
    plan.max_context, plan.max_context_limited_by = cap.max_context, cap.max_context_limited_by
    return plan


def _resolve_kv_dtype(kv_dtype: str, weight_dtype: str) -> str:
    if kv_dtype == "auto":
        return weight_dtype if weight_dtype in _FLOAT_DTYPES else "bf16"
    kv_dtype_bytes(kv_dtype)
    return kv_dtype


def _base_plan(name, source, config, breakdown, weights, kv_dtype, kv_scales) -> MemoryPlan:
    """The model-only part of the plan: shape, parameters, weight bytes."""
    windows = layer_windows(config)
    sliding = [w for w in windows if w is not None]
    mla = is_mla(config)
    if mla:
        attention = "MLA"
    else:
        kv, heads = num_kv_heads(config), int(config["num_attention_heads"])
        attention = "MHA" if kv == heads else ("MQA" if kv == 1 else "GQA")
    max_pos = config.get("max_position_embeddings")
    return MemoryPlan(
        model=name,
        source=source,
        model_type=str(config.get("model_type", "")),
        attention=attention,
        num_layers=int(config["num_hidden_layers"]),
        num_kv_heads=None if mla else num_kv_heads(config),
        kv_heads_per_rank=None,
        head_dim=None if mla else head_dim(config),
        kv_latent_dim=int(config["kv_lora_rank"]) + int(config["qk_rope_head_dim"])
        if mla
        else None,
        sliding_window=max(sliding) if sliding else None,
        sliding_layers=len(sliding),
        max_position_embeddings=int(max_pos) if max_pos else None,
        params_total=breakdown.total,
        params_active=breakdown.active,
        params_by_group=breakdown.by_name(),
        weight_dtype=weights.dtype,
        weight_group_size=weights.group_size,
        weight_bytes=weights.total_bytes,
        weight_bytes_per_rank=weights.per_rank_bytes,
        weight_scale_bytes=weights.scale_bytes,
        kv_dtype=kv_dtype,
        kv_scales=kv_scales,
        tp=1,
        block_size=16,
        kv_bytes_per_token_layer=0,
        kv_bytes_per_token=0,
        kv_bytes_per_block=0,
        warnings=list(breakdown.notes),
        config=dict(config),
    )


def _budget(plan, device, memory, utilization, reserve, kv_cache_bytes) -> int | None:
    """KV bytes per rank from the flags, filling the plan's device fields on the way."""
    if kv_cache_bytes is not None:
        if device is not None or memory is not None:
            raise ConfigError("give either a KV cache size or a device/memory, not both")
        budget = parse_bytes(kv_cache_bytes)
        if budget <= 0:
            raise ConfigError(f"KV cache size must be positive, got {kv_cache_bytes!r}")
        return budget
    if device is not None and memory is not None:
        raise ConfigError("give either --device or --memory, not both")
    if device is None and memory is None:
        return None
    if device is not None:
        found = get_device(device)
        plan.device, plan.memory_bytes = found.name, found.memory_bytes
    else:
        plan.device, plan.memory_bytes = "custom", parse_bytes(memory)
    plan.gpu_memory_utilization = utilization
    plan.reserve_bytes = parse_bytes(reserve)
    return kv_budget_bytes(
        plan.memory_bytes, utilization, plan.weight_bytes_per_rank, plan.reserve_bytes
    )
