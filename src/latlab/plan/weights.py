"""Parameter count and weight bytes from a Hugging Face ``config.json`` (no checkpoint needed).

Counts follow the modeling code of each family: Llama/Mistral (gated MLP, optional
attention and MLP biases), Qwen2 (biases on q, k and v), Gemma/Gemma-2 (four norms per layer
in Gemma-2, tied embeddings), Mixtral (routed experts + router) and DeepSeek-V2/V3 (MLA
projections, first dense layers, shared + routed experts). Weight-only quantization applies
to linear layers; embeddings, the LM head, norms, biases and routers stay in 16-bit, as
GPTQ/AWQ/fp8 checkpoints keep them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from latlab.errors import ConfigError
from latlab.plan.kv import head_dim, is_mla, num_kv_heads

WEIGHT_DTYPE_BYTES: dict[str, float] = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
QUANTIZED_WEIGHT_DTYPES = frozenset({"fp8", "int8", "int4"})
DEFAULT_INT4_GROUP_SIZE = 128
SCALE_BYTES = 2  # one fp16 scale per group (or per output channel)
ZERO_POINT_BYTES = 0.5  # asymmetric int4 (GPTQ/AWQ) packs one int4 zero point per group

KNOWN_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "mixtral", "gemma", "gemma2", "deepseek_v2", "deepseek_v3"}
)


@dataclass(frozen=True, slots=True)
class Linear:
    """``count`` identical weight matrices of ``in_features`` x ``out_features``."""

    in_features: int
    out_features: int
    count: int = 1

    @property
    def params(self) -> int:
        return self.in_features * self.out_features * self.count


@dataclass(frozen=True, slots=True)
class ParamGroup:
    """One kind of parameter: quantizable linear matrices plus params kept in 16 bit.

    ``active_fraction`` is the share a token actually uses (k / experts for routed
    experts); ``replicated`` groups are copied to every tensor-parallel rank.
    """

    name: str
    linears: tuple[Linear, ...] = ()
    dense: int = 0
    active_fraction: float = 1.0
    replicated: bool = False
    formula: str = ""

    @property
    def params(self) -> int:
        return self.dense + sum(linear.params for linear in self.linears)


@dataclass(slots=True)
class ParamBreakdown:
    """Parameters by group; ``total`` is what the checkpoint holds."""

    groups: list[ParamGroup]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(group.params for group in self.groups)

    @property
    def active(self) -> int:
        """Parameters one token uses (all but the experts it is not routed to)."""
        return int(sum(group.params * group.active_fraction for group in self.groups))

    def by_name(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for group in self.groups:
            out[group.name] = out.get(group.name, 0) + group.params
        return out


@dataclass(slots=True)
class WeightBytes:
    """Bytes the weights take in one dtype: values, quantization scales, and per rank."""

    dtype: str
    group_size: int | None
    total_bytes: int
    per_rank_bytes: int
    quantized_params: int
    unquantized_params: int
    unquantized_dtype: str
    scale_bytes: int


def _req(config: Mapping[str, Any], name: str) -> Any:
    if name not in config or config[name] is None:
        raise ConfigError(
            f"model config is missing the field {name!r}, needed for the parameter count"
        )
    return config[name]


def _int(config: Mapping[str, Any], name: str) -> int:
    return int(_req(config, name))


def normalize_weight_dtype(dtype: str) -> str:
    """Canonical weight dtype name (bfloat16 -> bf16); ConfigError listing the choices."""
    name = _ALIASES.get(dtype, dtype)
    if name not in WEIGHT_DTYPE_BYTES:
        raise ConfigError(
            f"unknown weight dtype {dtype!r}; choose one of {sorted(WEIGHT_DTYPE_BYTES)}"
        )
    return name


def ties_embeddings(config: Mapping[str, Any]) -> bool:
    """Whether the LM head reuses the embedding matrix (Gemma's default is yes)."""
    default = str(config.get("model_type", "")).startswith("gemma")
    value = config.get("tie_word_embeddings")
    return default if value is None else bool(value)


def count_parameters(config: Mapping[str, Any]) -> ParamBreakdown:
    """Parameter groups for a decoder-only model config (see the module docstring)."""
    model_type = str(config.get("model_type", ""))
    notes: list[str] = []
    if model_type not in KNOWN_MODEL_TYPES:
        notes.append(
            f"model_type {model_type!r} is not one latlab knows; counted as a Llama-style "
            "decoder (gated MLP, q/k/v/o projections, two norms per layer)"
        )
    hidden = _int(config, "hidden_size")
    layers = _int(config, "num_hidden_layers")
    vocab = _int(config, "vocab_size")
    embed = f"vocab {vocab:,} x hidden {hidden:,}"
    groups = [ParamGroup("embeddings", dense=vocab * hidden, formula=embed)]
    if not ties_embeddings(config):
        groups.append(ParamGroup("lm_head", dense=vocab * hidden, formula=embed))
    if is_mla(config):
        groups += _mla_attention(config, hidden, layers)
    else:
        groups += _gqa_attention(config, hidden, layers, model_type)
    groups += _feed_forward(config, hidden, layers)
    norms_per_layer = 4 if model_type == "gemma2" else 2
    groups.append(
        ParamGroup(
            "norms",
            dense=layers * norms_per_layer * hidden + hidden,
            replicated=True,
            formula=f"({layers} layers x {norms_per_layer} + 1 final) x hidden {hidden:,}",
        )
    )
    return ParamBreakdown(groups=groups, notes=notes)


def _gqa_attention(
    config: Mapping[str, Any], hidden: int, layers: int, model_type: str
) -> list[ParamGroup]:
    heads = _int(config, "num_attention_heads")
    q_width = heads * head_dim(config)
    kv_width = num_kv_heads(config) * head_dim(config)
    linears = (
        Linear(hidden, q_width, layers),  # q_proj
        Linear(hidden, kv_width, 2 * layers),  # k_proj, v_proj
        Linear(q_width, hidden, layers),  # o_proj
    )
    formula = (
        f"{layers} layers x (q {hidden}x{q_width} + k,v 2 x {hidden}x{kv_width} "
        f"+ o {q_width}x{hidden})"
    )
    groups = [ParamGroup("attention", linears=linears, formula=formula)]
    if model_type == "qwen2":  # Qwen2 keeps biases on q, k and v (not o), with no flag
        bias = layers * (q_width + 2 * kv_width)
        formula = f"{layers} layers x (q {q_width} + k,v 2 x {kv_width})"
        groups.append(ParamGroup("attention_bias", dense=bias, formula=formula))
    elif config.get("attention_bias"):
        bias = layers * (q_width + 2 * kv_width + hidden)
        formula = f"{layers} layers x (q {q_width} + k,v 2 x {kv_width} + o {hidden})"
        groups.append(ParamGroup("attention_bias", dense=bias, formula=formula))
    return groups


def _mla_attention(config: Mapping[str, Any], hidden: int, layers: int) -> list[ParamGroup]:
    """DeepSeek MLA: q (optionally low-rank), the shared KV latent, its up-projection, o."""
    heads = _int(config, "num_attention_heads")
    rope = _int(config, "qk_rope_head_dim")
    nope = _int(config, "qk_nope_head_dim")
    v_dim = _int(config, "v_head_dim")
    latent = _int(config, "kv_lora_rank")
    q_rank = config.get("q_lora_rank")
    q_width = heads * (nope + rope)
    sharded = [
        Linear(latent, heads * (nope + v_dim), layers),  # kv_b_proj
        Linear(heads * v_dim, hidden, layers),  # o_proj
    ]
    replicated = [Linear(hidden, latent + rope, layers)]  # kv_a_proj_with_mqa
    norms = layers * latent  # kv_a_layernorm
    latent_formula = f"{layers} layers x (kv_a {hidden}x{latent + rope} + norm {latent}"
    if q_rank:
        q_rank = int(q_rank)
        replicated.append(Linear(hidden, q_rank, layers))  # q_a_proj
        sharded.append(Linear(q_rank, q_width, layers))  # q_b_proj
        norms += layers * q_rank  # q_a_layernorm
        latent_formula += f" + q_a {hidden}x{q_rank} + norm {q_rank}"
        q_formula = f"q_b {q_rank}x{q_width}"
    else:
        sharded.append(Linear(hidden, q_width, layers))  # q_proj
        q_formula = f"q {hidden}x{q_width}"
    formula = (
        f"{layers} layers x ({q_formula} + kv_b {latent}x{heads * (nope + v_dim)} "
        f"+ o {heads * v_dim}x{hidden})"
    )
    return [
        ParamGroup("attention", linears=tuple(sharded), formula=formula),
        ParamGroup(
            "attention_latent",
            linears=tuple(replicated),
            dense=norms,
            replicated=True,
            formula=latent_formula + ")",
        ),
    ]


def _mlp(hidden: int, intermediate: int, count: int) -> tuple[Linear, ...]:
    """Gated MLP: gate and up (hidden -> intermediate), down (intermediate -> hidden)."""
    return (Linear(hidden, intermediate, 2 * count), Linear(intermediate, hidden, count))


def _feed_forward(config: Mapping[str, Any], hidden: int, layers: int) -> list[ParamGroup]:
    if config.get("num_local_experts"):
        return _mixtral_experts(config, hidden, layers)
    if config.get("n_routed_experts"):
        return _deepseek_experts(config, hidden, layers)
    intermediate = _int(config, "intermediate_size")
    formula = f"{layers} layers x 3 x {hidden}x{intermediate} (gate, up, down)"
    groups = [ParamGroup("mlp", linears=_mlp(hidden, intermediate, layers), formula=formula)]
    if config.get("mlp_bias"):
        formula = f"{layers} layers x (2 x {intermediate} + {hidden})"
        bias = layers * (2 * intermediate + hidden)
        groups.append(ParamGroup("mlp_bias", dense=bias, formula=formula))
    return groups


def _mixtral_experts(config: Mapping[str, Any], hidden: int, layers: int) -> list[ParamGroup]:
    experts = _int(config, "num_local_experts")
    top_k = _int(config, "num_experts_per_tok")
    intermediate = _int(config, "intermediate_size")
    return [
        ParamGroup(
            "routed_experts",
            linears=_mlp(hidden, intermediate, layers * experts),
            active_fraction=top_k / experts,
            formula=f"{layers} layers x {experts} experts x 3 x {hidden}x{intermediate}"
            f" ({top_k} active per token)",
        ),
        ParamGroup(
            "router",
            dense=layers * hidden * experts,
            replicated=True,
            formula=f"{layers} layers x {hidden} x {experts} experts",
        ),
    ]


def _deepseek_experts(config: Mapping[str, Any], hidden: int, layers: int) -> list[ParamGroup]:
    """First ``first_k_dense_replace`` layers dense, then MoE every ``moe_layer_freq``."""
    experts = _int(config, "n_routed_experts")
    top_k = _int(config, "num_experts_per_tok")
    first_dense = int(config.get("first_k_dense_replace") or 0)
    freq = int(config.get("moe_layer_freq") or 1)
    moe_layers = sum(1 for i in range(layers) if i >= first_dense and i % freq == 0)
    dense_layers = layers - moe_layers
    expert_width = _int(config, "moe_intermediate_size")
    shared = int(config.get("n_shared_experts") or 0)
    groups = []
    if dense_layers:
        width = _int(config, "intermediate_size")
        formula = f"{dense_layers} dense layers x 3 x {hidden}x{width}"
        groups.append(ParamGroup("mlp", linears=_mlp(hidden, width, dense_layers), formula=formula))
    groups.append(
        ParamGroup(
            "routed_experts",
            linears=_mlp(hidden, expert_width, moe_layers * experts),
            active_fraction=top_k / experts,
            formula=f"{moe_layers} MoE layers x {experts} experts x 3 x {hidden}x{expert_width}"
            f" ({top_k} active per token)",
        )
    )
    if shared:  # the shared experts run as one MLP of shared x expert width
        formula = f"{moe_layers} MoE layers x 3 x {hidden}x({shared} x {expert_width})"
        shared_mlp = _mlp(hidden, shared * expert_width, moe_layers)
        groups.append(ParamGroup("shared_experts", linears=shared_mlp, formula=formula))
    router = moe_layers * hidden * experts
    formula = f"{moe_layers} MoE layers x {hidden} x {experts} experts"
    if config.get("topk_method") == "noaux_tc":  # DeepSeek-V3's per-expert correction bias
        router += moe_layers * experts
        formula += f" + {moe_layers} x {experts} correction biases"
    groups.append(ParamGroup("router", dense=router, replicated=True, formula=formula))
    return groups


def weight_bytes(
    breakdown: ParamBreakdown,
    dtype: str = "bf16",
    group_size: int | None = None,
    tp: int = 1,
    zero_point: bool = False,
) -> WeightBytes:
    """Bytes of all weights in ``dtype``, scales included, and what one TP rank holds.

    Quantized dtypes (fp8, int8, int4) store linear weights at their width plus one fp16
    scale per ``group_size`` input values of each output row (per output channel when
    ``group_size`` is None; int4 defaults to groups of 128), and with ``zero_point`` an
    int4 zero per group. Everything else stays bf16.
    """
    dtype = normalize_weight_dtype(dtype)
    if tp < 1:
        raise ConfigError(f"tensor parallel size must be at least 1, got {tp}")
    quantized = dtype in QUANTIZED_WEIGHT_DTYPES
    if quantized and group_size is None and dtype == "int4":
        group_size = DEFAULT_INT4_GROUP_SIZE
    if group_size is not None and group_size < 1:
        raise ConfigError(f"weight group size must be a positive integer, got {group_size}")
    other_dtype = "bf16" if quantized else dtype
    linear_bytes = WEIGHT_DTYPE_BYTES[dtype]
    other_bytes = WEIGHT_DTYPE_BYTES[other_dtype]
    per_scale = SCALE_BYTES + (ZERO_POINT_BYTES if zero_point else 0)
    total = per_rank = 0.0
    scales = 0.0
    linear_params = 0
    for group in breakdown.groups:
        linear = sum(item.params for item in group.linears)
        linear_params += linear
        group_scales = (
            sum(_scale_groups(item, group_size) for item in group.linears) * per_scale
            if quantized
            else 0
        )
        size = linear * linear_bytes + group_scales + group.dense * other_bytes
        scales += group_scales
        total += size
        per_rank += size if group.replicated else size / tp
    return WeightBytes(
        dtype=dtype,
        group_size=group_size if quantized else None,
        total_bytes=round(total),
        per_rank_bytes=math.ceil(per_rank),
        quantized_params=linear_params if quantized else 0,
        unquantized_params=breakdown.total - (linear_params if quantized else 0),
        unquantized_dtype=other_dtype,
        scale_bytes=round(scales),
    )


def _scale_groups(linear: Linear, group_size: int | None) -> int:
    """Scales one matrix set needs: per output row, one per group of input values."""
    per_row = 1 if group_size is None else -(-linear.in_features // group_size)
    return linear.out_features * per_row * linear.count
