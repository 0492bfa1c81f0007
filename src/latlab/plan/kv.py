"""KV cache bytes per token: the one place this is computed (engine and planner share it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latlab.errors import ConfigError

KV_DTYPE_BYTES: dict[str, float] = {
    "fp32": 4,
    "float32": 4,
    "bf16": 2,
    "bfloat16": 2,
    "fp16": 2,
    "float16": 2,
    "fp8": 1,
    "int8": 1,
}


def _required(config: Mapping[str, Any], field: str) -> Any:
    if field not in config or config[field] is None:
        raise ConfigError(
            f"model config is missing the field {field!r}, needed for the KV cache size"
        )
    return config[field]


def head_dim(config: Mapping[str, Any]) -> int:
    """Attention head size: the config's ``head_dim`` when set, else hidden / heads."""
    explicit = config.get("head_dim")
    if explicit:
        return int(explicit)
    return int(_required(config, "hidden_size")) // int(_required(config, "num_attention_heads"))


def num_kv_heads(config: Mapping[str, Any]) -> int:
    """KV heads (GQA); models without ``num_key_value_heads`` use full multi-head attention."""
    value = config.get("num_key_value_heads")
    return int(value) if value else int(_required(config, "num_attention_heads"))


def kv_bytes_per_token(config: Mapping[str, Any], kv_dtype: str = "bf16", tp: int = 1) -> int:
    """Bytes one token's K and V take across all layers on one tensor-parallel rank.

    2 (K and V) x layers x KV heads per rank x head_dim x bytes per element. KV heads are
    split across ``tp`` ranks but never below one per rank (engines replicate them).
    """
    if kv_dtype not in KV_DTYPE_BYTES:
        raise ConfigError(f"unknown KV dtype {kv_dtype!r}; choose one of {sorted(KV_DTYPE_BYTES)}")
    layers = int(_required(config, "num_hidden_layers"))
    heads_per_rank = max(1, num_kv_heads(config) // max(1, tp))
    return int(2 * layers * heads_per_rank * head_dim(config) * KV_DTYPE_BYTES[kv_dtype])
