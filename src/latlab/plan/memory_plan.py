"""MemoryPlan: every figure of one memory plan, as ``latlab plan`` prints it and --json writes it.

A record only: ``planner.plan_memory`` fills it, ``explain.explain_plan`` shows its formulas.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(kw_only=True, slots=True)
class MemoryPlan:
    """Every figure of a plan; ``to_dict()`` is the JSON the CLI prints with --json.

    Capacity fields are None when no device, memory or KV budget was given; sequence fields
    are None when no context or concurrency was asked for.
    """

    model: str
    source: str
    model_type: str
    attention: str
    num_layers: int
    num_kv_heads: int | None
    kv_heads_per_rank: int | None
    head_dim: int | None
    kv_latent_dim: int | None
    sliding_window: int | None
    sliding_layers: int
    max_position_embeddings: int | None
    params_total: int
    params_active: int
    params_by_group: dict[str, int]
    weight_dtype: str
    weight_group_size: int | None
    weight_bytes: int
    weight_bytes_per_rank: int
    weight_scale_bytes: int
    kv_dtype: str
    kv_scales: str
    tp: int
    block_size: int
    kv_bytes_per_token_layer: int
    kv_bytes_per_token: int
    kv_bytes_per_block: int
    device: str | None = None
    memory_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    reserve_bytes: int | None = None
    kv_budget_bytes: int | None = None
    num_blocks: int | None = None
    kv_tokens: int | None = None
    context: int | None = None
    kv_bytes_per_sequence: int | None = None
    max_concurrency: int | None = None
    concurrency: int | None = None
    max_context: int | None = None
    max_context_limited_by: str | None = None
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every figure (the model config itself left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"}
        out["params_by_group"] = dict(self.params_by_group)
        out["warnings"] = list(self.warnings)
        return out
