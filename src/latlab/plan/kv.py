"""KV cache bytes per token: the one place this is computed (engine and planner share it).

A token's cache entry, per layer, is K and V for each KV head (GQA), or for MLA models
(DeepSeek-V2/V3) one compressed latent of ``kv_lora_rank + qk_rope_head_dim`` values shared
by all heads. Sliding-window layers keep at most the window; paged engines allocate whole
blocks. Everything here is pure arithmetic on a Hugging Face ``config.json`` dict.
"""

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
    "half": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "int8": 1,
    "int4": 0.5,
}

# Quantized caches need scales. "tensor": one scale per layer for K and for V (vLLM's fp8
# cache, TensorRT-LLM's int8/fp8 cache), so nothing per token. "token-head": an fp16 scale
# and an fp16 zero point per token, layer, KV head and K/V (LMDeploy's int8/int4 cache).
KV_SCALE_KINDS: tuple[str, ...] = ("tensor", "token-head")
TOKEN_HEAD_SCALE_BYTES = 4
_QUANTIZED_KV = frozenset({"fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4"})


def _required(config: Mapping[str, Any], field: str) -> Any:
    if field not in config or config[field] is None:
        raise ConfigError(
            f"model config is missing the field {field!r}, needed for the KV cache size"
        )
    return config[field]


def kv_dtype_bytes(kv_dtype: str) -> float:
    """Bytes per cached element for a KV dtype name; ConfigError naming the choices."""
    if kv_dtype not in KV_DTYPE_BYTES:
        raise ConfigError(f"unknown KV dtype {kv_dtype!r}; choose one of {sorted(KV_DTYPE_BYTES)}")
    return KV_DTYPE_BYTES[kv_dtype]


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


def is_mla(config: Mapping[str, Any]) -> bool:
    """True for multi-head latent attention (DeepSeek-V2/V3): the cache holds one latent."""
    return bool(config.get("kv_lora_rank"))


def kv_heads_per_rank(config: Mapping[str, Any], tp: int = 1) -> int:
    """KV heads one tensor-parallel rank stores: split across ranks, never below one.

    With more ranks than KV heads, engines replicate each head on several ranks.
    """
    return max(1, num_kv_heads(config) // max(1, tp))


def check_tensor_parallel(config: Mapping[str, Any], tp: int) -> None:
    """Reject a TP degree engines cannot shard: heads must split evenly across ranks."""
    if tp < 1:
        raise ConfigError(f"tensor parallel size must be at least 1, got {tp}")
    heads = int(_required(config, "num_attention_heads"))
    if heads % tp:
        raise ConfigError(
            f"tensor parallel size {tp} does not divide num_attention_heads {heads}; "
            "choose a divisor of the head count"
        )
    if is_mla(config):
        return
    kv = num_kv_heads(config)
    if kv % tp and tp % kv:
        raise ConfigError(
            f"tensor parallel size {tp} and num_key_value_heads {kv}: one must divide the other"
        )


def kv_elements_per_token_layer(config: Mapping[str, Any], tp: int = 1) -> int:
    """Values one token stores in one layer on one rank (before multiplying by dtype bytes).

    GQA/MHA: 2 (K and V) x KV heads per rank x head_dim. MLA: kv_lora_rank +
    qk_rope_head_dim, with no factor 2 (K and V are both rebuilt from the latent) and no TP
    split (every rank keeps the whole latent).
    """
    if is_mla(config):
        return int(config["kv_lora_rank"]) + int(_required(config, "qk_rope_head_dim"))
    return 2 * kv_heads_per_rank(config, tp) * head_dim(config)


def kv_scale_bytes_per_token_layer(
    config: Mapping[str, Any], kv_dtype: str, tp: int = 1, kv_scales: str = "tensor"
) -> int:
    """Scale bytes a quantized cache keeps per token per layer (zero for per-tensor scales)."""
    if kv_scales not in KV_SCALE_KINDS:
        raise ConfigError(f"unknown KV scale kind {kv_scales!r}; choose one of {KV_SCALE_KINDS}")
    if kv_scales == "tensor" or kv_dtype not in _QUANTIZED_KV:
        return 0
    groups = 1 if is_mla(config) else 2 * kv_heads_per_rank(config, tp)
    return groups * TOKEN_HEAD_SCALE_BYTES


def kv_bytes_per_token_layer(
    config: Mapping[str, Any], kv_dtype: str = "bf16", tp: int = 1, *, kv_scales: str = "tensor"
) -> int:
    """Bytes one token takes in one layer on one rank, scales included."""
    values = kv_elements_per_token_layer(config, tp) * kv_dtype_bytes(kv_dtype)
    return int(values) + kv_scale_bytes_per_token_layer(config, kv_dtype, tp, kv_scales)


def kv_bytes_per_token(
    config: Mapping[str, Any], kv_dtype: str = "bf16", tp: int = 1, *, kv_scales: str = "tensor"
) -> int:
    """Bytes one token's K and V take across all layers on one tensor-parallel rank.

    2 (K and V) x layers x KV heads per rank x head_dim x bytes per element. KV heads are
    split across ``tp`` ranks but never below one per rank (engines replicate them). MLA
    models store layers x (kv_lora_rank + qk_rope_head_dim) x bytes instead. Sliding
    windows do not change this per-token figure; they cap how many tokens a layer holds
    (see ``kv_bytes_per_sequence``).
    """
    kv_dtype_bytes(kv_dtype)
    layers = int(_required(config, "num_hidden_layers"))
    return layers * kv_bytes_per_token_layer(config, kv_dtype, tp, kv_scales=kv_scales)


def layer_windows(config: Mapping[str, Any]) -> list[int | None]:
    """Sliding window per layer (None = full attention), as the model's code applies it.

    Order of evidence: an explicit ``layer_types`` list (newer transformers); Gemma-2's
    alternation (even layers slide); Gemma-3's ``sliding_window_pattern``; Qwen2's
    ``use_sliding_window`` from ``max_window_layers`` on; otherwise ``sliding_window`` on
    every layer (Mistral-7B-v0.1) when set.
    """
    layers = int(_required(config, "num_hidden_layers"))
    window = config.get("sliding_window")
    layer_types = config.get("layer_types")
    if layer_types:
        if len(layer_types) != layers:
            raise ConfigError(
                f"config field 'layer_types' has {len(layer_types)} entries for {layers} layers"
            )
        if any(kind == "sliding_attention" for kind in layer_types):
            window = int(_required(config, "sliding_window"))
        return [window if kind == "sliding_attention" else None for kind in layer_types]
    if not window:
        return [None] * layers
    window = int(window)
    model_type = config.get("model_type", "")
    if model_type == "gemma2":
        return [window if i % 2 == 0 else None for i in range(layers)]
    if model_type.startswith("gemma3"):
        pattern = int(config.get("sliding_window_pattern") or 6)
        return [None if (i + 1) % pattern == 0 else window for i in range(layers)]
    if model_type.startswith("qwen2"):
        if not config.get("use_sliding_window", False):
            return [None] * layers
        first = int(config.get("max_window_layers", 0))
        return [window if i >= first else None for i in range(layers)]
    if config.get("use_sliding_window") is False:
        return [None] * layers
    return [window] * layers


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    """Blocks a paged cache allocates for ``num_tokens`` tokens (the last one partly full)."""
    _check_block_size(block_size)
    return -(-max(0, num_tokens) // block_size)


def round_up_to_block(num_tokens: int, block_size: int) -> int:
    """Token slots those blocks hold: ``num_tokens`` rounded up to a multiple of the block."""
    return blocks_for_tokens(num_tokens, block_size) * block_size


def num_blocks(budget_bytes: int, block_size: int, bytes_per_token: int) -> int:
    """Whole blocks that fit in a byte budget: budget // (block_size x bytes per token)."""
    _check_block_size(block_size)
    if bytes_per_token <= 0:
        raise ConfigError(f"bytes per token must be positive, got {bytes_per_token}")
    return max(0, int(budget_bytes) // (block_size * bytes_per_token))


def layer_blocks_for_context(context_len: int, window: int | None, block_size: int) -> int:
    """Blocks one layer holds for a sequence of ``context_len`` tokens.

    A sliding layer attends to the current token and the ``window - 1`` before it; those
    tokens straddle at most ``ceil((window - 1) / block_size) + 1`` blocks, since the window
    rarely starts on a block boundary (engines free blocks that fall wholly out of the
    window). Never more than the full
    sequence needs.
    """
    full = blocks_for_tokens(context_len, block_size)
    if window is None:
        return full
    return min(full, blocks_for_tokens(window - 1, block_size) + 1)


def kv_bytes_per_sequence(
    config: Mapping[str, Any],
    context_len: int,
    kv_dtype: str = "bf16",
    tp: int = 1,
    block_size: int = 1,
    *,
    kv_scales: str = "tensor",
) -> int:
    """KV bytes one sequence of ``context_len`` tokens holds on one rank, block-rounded.

    block_size=1 gives the exact token count (no paging waste).
    """
    per_layer = kv_bytes_per_token_layer(config, kv_dtype, tp, kv_scales=kv_scales)
    blocks = sum(
        layer_blocks_for_context(context_len, window, block_size)
        for window in layer_windows(config)
    )
    return blocks * block_size * per_layer


def _check_block_size(block_size: int) -> None:
    if int(block_size) < 1:
        raise ConfigError(f"block size must be a positive number of tokens, got {block_size}")
