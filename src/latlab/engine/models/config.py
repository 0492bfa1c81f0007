"""ModelArgs: the fields of a Hugging Face config.json our Llama-family model needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latlab.dtypes import checkpoint_dtype
from latlab.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "mistral",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True, slots=True)
class ModelArgs:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    torch_dtype: str | None
    sliding_window: int | None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    raw: dict[str, Any] = field(default_factory=dict)


def read_config_json(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict (latlab.model_files reads it: one reader, one set of errors)."""
    from latlab.model_files import read_config

    return read_config(model_dir)


def parse_model_args(raw: dict[str, Any]) -> ModelArgs:
    """Validate the architecture and normalise old (rope_theta/rope_scaling) and new
    (rope_parameters) transformers config layouts into one record."""
    archs = raw.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        named = ", ".join(map(str, archs)) or f"model_type={raw.get('model_type')!r}"
        custom = ""
        if raw.get("auto_map"):
            custom = (
                "; it ships its own Python code (auto_map), which latlab never runs "
                "(trust_remote_code=False)"
            )
        raise ModelLoadError(
            f"unsupported model architecture {named}; latlab's engine runs "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} (use the transformers target for others)"
            + custom
        )
    model_type = SUPPORTED_ARCHITECTURES[arch]
    try:
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        rope_theta, rope_scaling = _rope(raw)
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        sliding = raw.get("sliding_window") if raw.get("use_sliding_window", True) else None
        return ModelArgs(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            intermediate_size=int(raw["intermediate_size"]),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", model_type == "qwen2")),
            torch_dtype=checkpoint_dtype(raw),
            sliding_window=int(sliding) if sliding else None,
            eos_token_ids=eos_ids,
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"config.json is missing or has a bad field: {exc}") from exc


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = raw.get("rope_parameters")
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
        scaling = dict(params)
    else:
        theta = float(raw.get("rope_theta", 10000.0))
        scaling = dict(raw["rope_scaling"]) if raw.get("rope_scaling") else None
    if scaling is not None:
        rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ModelLoadError(
                f"unsupported rope scaling {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}"
            )
        scaling["rope_type"] = rope_type
        if rope_type == "default":
            scaling = None
    return theta, scaling
