"""``--explain``: every figure of a plan as its formula with the numbers filled in.

A planner people cannot check is a planner people cannot trust; each line here can be
recomputed by hand from the config and the flags.
"""

from __future__ import annotations

from latlab.plan.kv import (
    KV_DTYPE_BYTES,
    TOKEN_HEAD_SCALE_BYTES,
    blocks_for_tokens,
    kv_scale_bytes_per_token_layer,
    layer_windows,
)
from latlab.plan.memory_plan import MemoryPlan
from latlab.plan.units import format_bytes, format_count
from latlab.plan.weights import (
    SCALE_BYTES,
    WEIGHT_DTYPE_BYTES,
    count_parameters,
)

_WIDTH = 18


def _line(label: str, text: str) -> str:
    return f"  {label:<{_WIDTH}}= {text}"


def _b(value: float) -> str:
    return f"{value:,.0f} B ({format_bytes(value)})"


def _elem(value: float) -> str:
    return f"{value:g} B"


def explain_plan(plan: MemoryPlan) -> list[str]:
    """Lines grouped by section: parameters, weights, KV cache, budget, sequences."""
    lines = _parameters(plan) + _weights(plan) + _kv(plan)
    if plan.kv_budget_bytes is not None:
        lines += _budget(plan)
    if plan.context is not None or plan.concurrency is not None:
        lines += _sequences(plan)
    return lines


def _parameters(plan: MemoryPlan) -> list[str]:
    lines = [f"Parameters ({plan.model}, {plan.model_type or 'unknown type'})"]
    for group in count_parameters(plan.config).groups:
        lines.append(_line(group.name, f"{group.formula} = {group.params:,}"))
        if group.name == "embeddings" and "lm_head" not in plan.params_by_group:
            lines.append(_line("lm_head", "tied to the embeddings = 0"))
    total = f"{plan.params_total:,} ({format_count(plan.params_total)})"
    if plan.params_active != plan.params_total:
        total += f"; active per token {plan.params_active:,} ({format_count(plan.params_active)})"
    lines.append(_line("total", total))
    return lines


def _weights(plan: MemoryPlan) -> list[str]:
    dtype = plan.weight_dtype
    lines = [f"Weights ({dtype})"]
    if plan.weight_group_size is None and dtype not in ("fp8", "int8", "int4"):
        formula = f"{plan.params_total:,} params x {_elem(WEIGHT_DTYPE_BYTES[dtype])}"
        lines.append(_line("bytes", f"{formula} = {_b(plan.weight_bytes)}"))
    else:
        breakdown = count_parameters(plan.config)
        linear = sum(item.params for g in breakdown.groups for item in g.linears)
        other = plan.params_total - linear
        groups = (
            "per output channel"
            if plan.weight_group_size is None
            else f"per {plan.weight_group_size} inputs"
        )
        formula = (
            f"linear {linear:,} x {_elem(WEIGHT_DTYPE_BYTES[dtype])} + scales "
            f"{plan.weight_scale_bytes:,} B ({SCALE_BYTES} B fp16 scale {groups}) "
            f"+ other {other:,} x 2 B (bf16)"
        )
        lines.append(_line("bytes", f"{formula} = {_b(plan.weight_bytes)}"))
    if plan.tp > 1:
        lines.append(
            _line(
                f"per rank (tp {plan.tp})",
                f"sharded bytes / {plan.tp} + replicated (norms, routers, MLA latent "
                f"projections) = {_b(plan.weight_bytes_per_rank)}",
            )
        )
    return lines


def _kv(plan: MemoryPlan) -> list[str]:
    dtype = plan.kv_dtype
    size = _elem(KV_DTYPE_BYTES[dtype])
    lines = [f"KV cache ({dtype}, scales per {plan.kv_scales})"]
    if plan.attention == "MLA":
        rope = int(plan.config["qk_rope_head_dim"])
        latent = int(plan.config["kv_lora_rank"])
        text = (
            f"(kv_lora_rank {latent} + qk_rope_head_dim {rope}) x {size} "
            "(one latent for K and V, kept whole on every rank)"
        )
    else:
        heads = f"{plan.kv_heads_per_rank} KV heads"
        if plan.tp > 1:
            heads += f" (max(1, {plan.num_kv_heads} // tp {plan.tp}))"
        text = f"2 (K,V) x {heads} x {plan.head_dim} head_dim x {size}"
    scales = kv_scale_bytes_per_token_layer(plan.config, dtype, plan.tp, plan.kv_scales)
    if scales:
        groups = scales // TOKEN_HEAD_SCALE_BYTES
        per = "latent" if plan.attention == "MLA" else "head and K/V"
        text += f" + {groups} x {TOKEN_HEAD_SCALE_BYTES} B (fp16 scale + zero per {per})"
    lines.append(_line("per token, layer", f"{text} = {plan.kv_bytes_per_token_layer:,} B"))
    lines.append(
        _line(
            "per token",
            f"{plan.num_layers} layers x {plan.kv_bytes_per_token_layer:,} B = "
            f"{_b(plan.kv_bytes_per_token)}",
        )
    )
    lines.append(
        _line(
            "per block",
            f"{plan.block_size} tokens x {plan.kv_bytes_per_token:,} B = "
            f"{_b(plan.kv_bytes_per_block)}",
        )
    )
    if plan.sliding_layers:
        lines.append(
            _line(
                "sliding window",
                f"{plan.sliding_layers} of {plan.num_layers} layers keep at most the last "
                f"{plan.sliding_window:,} tokens",
            )
        )
    return lines


def _budget(plan: MemoryPlan) -> list[str]:
    lines = ["KV budget (per rank)"]
    budget = plan.kv_budget_bytes
    if plan.memory_bytes is None:
        lines.append(_line("KV budget", f"given = {_b(budget)}"))
    else:
        usable = int(plan.memory_bytes * plan.gpu_memory_utilization)
        lines.append(
            _line(
                "usable",
                f"{plan.memory_bytes:,} B ({plan.device}) x {plan.gpu_memory_utilization:g} = "
                f"{_b(usable)}",
            )
        )
        lines.append(
            _line(
                "KV budget",
                f"{usable:,} - weights {plan.weight_bytes_per_rank:,} - reserve "
                f"{plan.reserve_bytes:,} = {_b(budget)}",
            )
        )
    lines.append(
        _line(
            "blocks",
            f"{budget:,} // {plan.kv_bytes_per_block:,} B = {plan.num_blocks:,} blocks",
        )
    )
    lines.append(
        _line(
            "KV tokens",
            f"{plan.num_blocks:,} blocks x {plan.block_size} = {plan.kv_tokens:,} tokens",
        )
    )
    return lines


def _sequences(plan: MemoryPlan) -> list[str]:
    lines = ["Sequences"]
    if plan.context is not None:
        lines.append(_line("per sequence", _sequence_formula(plan)))
        if plan.max_concurrency is not None:
            lines.append(
                _line(
                    "max concurrency",
                    f"{plan.kv_budget_bytes:,} // {plan.kv_bytes_per_sequence:,} = "
                    f"{plan.max_concurrency:,} sequences of {plan.context:,} tokens",
                )
            )
    if plan.max_context is not None:
        why = (
            "the model's max_position_embeddings"
            if plan.max_context_limited_by == "model"
            else "memory"
        )
        lines.append(
            _line(
                "max context",
                f"largest L with {plan.concurrency} x bytes(L) <= {plan.kv_budget_bytes:,}: "
                f"L = {plan.max_context:,} tokens (limited by {why})",
            )
        )
    return lines


def _sequence_formula(plan: MemoryPlan) -> str:
    context, block = plan.context, plan.block_size
    full_blocks = blocks_for_tokens(context, block)
    per_layer = plan.kv_bytes_per_token_layer
    if not plan.sliding_layers:
        return (
            f"ceil({context:,} / {block}) = {full_blocks:,} blocks x {block} tokens x "
            f"{plan.kv_bytes_per_token:,} B = {_b(plan.kv_bytes_per_sequence)}"
        )
    windows = layer_windows(plan.config)
    full_layers = sum(1 for w in windows if w is None)
    window = plan.sliding_window
    window_blocks = min(full_blocks, blocks_for_tokens(window - 1, block) + 1)
    return (
        f"({full_layers} full layers x {full_blocks:,} blocks + {plan.sliding_layers} sliding "
        f"layers x min({full_blocks:,}, ceil({window - 1:,} / {block}) + 1) = "
        f"{window_blocks:,} blocks) x {block} tokens x {per_layer:,} B = "
        f"{_b(plan.kv_bytes_per_sequence)}"
    )
