"""``plan_memory``: weights, KV cache and capacity for one model on one device, in one record."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
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
    if block_size < 1:
        raise ConfigError(f"block size must be a positive number of tokens, got {block_size}")
    kv = _KV(config=config, dtype=kv_dtype, scales=kv_scales, tp=tp, block_size=block_size)
    fields = _model_fields(spec.name, spec.source, config, breakdown, weights) | kv.fields()
    device_fields, budget = _device_fields(
        device, memory, gpu_memory_utilization, reserve, kv_cache_bytes, weights.per_rank_bytes
    )
    warnings = list(breakdown.notes)
    max_pos = fields["max_position_embeddings"]
    if context is not None and max_pos and context > max_pos:
        warnings.append(
            f"context {context:,} is longer than the model's max_position_embeddings {max_pos:,}"
        )
    return MemoryPlan(
        **fields,
        **device_fields,
        **kv.sequence_fields(budget, context, concurrency),
        warnings=warnings,
        config=dict(config),
    )


@dataclass(kw_only=True, frozen=True, slots=True)
class _KV:
    """The KV cache's layout for one plan: its per-token figures and what a budget holds."""

    config: Mapping[str, Any]
    dtype: str
    scales: str
    tp: int
    block_size: int

    def fields(self) -> dict[str, Any]:
        per_token = kv_bytes_per_token(self.config, self.dtype, self.tp, kv_scales=self.scales)
        return {
            "kv_dtype": self.dtype,
            "kv_scales": self.scales,
            "tp": self.tp,
            "block_size": self.block_size,
            "kv_heads_per_rank": None
            if is_mla(self.config)
            else kv_heads_per_rank(self.config, self.tp),
            "kv_bytes_per_token_layer": kv_bytes_per_token_layer(
                self.config, self.dtype, self.tp, kv_scales=self.scales
            ),
            "kv_bytes_per_token": per_token,
            "kv_bytes_per_block": per_token * self.block_size,
        }

    def sequence_fields(
        self, budget: int | None, context: int | None, concurrency: int | None
    ) -> dict[str, Any]:
        """Blocks, tokens and sequences a budget holds (only the sequence bytes without one)."""
        if budget is None:
            if context is None:
                return {}
            per_sequence = kv_bytes_per_sequence(
                self.config, context, self.dtype, self.tp, self.block_size, kv_scales=self.scales
            )
            return {"context": context, "kv_bytes_per_sequence": per_sequence}
        cap = compute_capacity(self.config, budget, kv_dtype=self.dtype, tp=self.tp,
                               block_size=self.block_size, kv_scales=self.scales,
                               context=context, concurrency=concurrency)  # fmt: skip
        return {
            "kv_budget_bytes": budget,
            "num_blocks": cap.num_blocks,
            "kv_tokens": cap.kv_tokens,
            "context": cap.context,
            "kv_bytes_per_sequence": cap.kv_bytes_per_sequence,
            "max_concurrency": cap.max_concurrency,
            "concurrency": cap.concurrency,
            "max_context": cap.max_context,
            "max_context_limited_by": cap.max_context_limited_by,
        }


def _resolve_kv_dtype(kv_dtype: str, weight_dtype: str) -> str:
    if kv_dtype == "auto":
        return weight_dtype if weight_dtype in _FLOAT_DTYPES else "bf16"
    kv_dtype_bytes(kv_dtype)
    return kv_dtype


def _model_fields(name, source, config, breakdown, weights) -> dict[str, Any]:
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
    return dict(
        model=name,
        source=source,
        model_type=str(config.get("model_type", "")),
        attention=attention,
        num_layers=int(config["num_hidden_layers"]),
        num_kv_heads=None if mla else num_kv_heads(config),
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
    )


def _device_fields(
    device, memory, utilization, reserve, kv_cache_bytes, weight_bytes_per_rank
) -> tuple[dict[str, Any], int | None]:
    """The device part of the plan and the KV bytes per rank the flags give (None: no budget)."""
    if kv_cache_bytes is not None:
        if device is not None or memory is not None:
            raise ConfigError("give either a KV cache size or a device/memory, not both")
        budget = parse_bytes(kv_cache_bytes)
        if budget <= 0:
            raise ConfigError(f"KV cache size must be positive, got {kv_cache_bytes!r}")
        return {}, budget
    if device is not None and memory is not None:
        raise ConfigError("give either --device or --memory, not both")
    if device is None and memory is None:
        return {}, None
    if device is not None:
        found = get_device(device)
        name, memory_bytes = found.name, found.memory_bytes
    else:
        name, memory_bytes = "custom", parse_bytes(memory)
    reserve_bytes = parse_bytes(reserve)
    fields = {"device": name, "memory_bytes": memory_bytes,
              "gpu_memory_utilization": utilization, "reserve_bytes": reserve_bytes}  # fmt: skip
    budget = kv_budget_bytes(memory_bytes, utilization, weight_bytes_per_rank, reserve_bytes)
    return fields, budget
