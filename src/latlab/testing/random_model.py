"""Random-weight Llama-family models of any shape, saved like a real checkpoint.

Speed does not depend on what the weights learned, so benchmarks of a ~106M-parameter model
and tests of unusual shapes (qwen2's attention bias, mistral, deep or wide stacks) use seeded
random weights instead of downloads. The bundled tokenizer is copied in, so the directory
loads with AutoModelForCausalLM / AutoTokenizer and with latlab's engine like any model.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latlab.errors import ConfigError

MODEL_TYPES = ("llama", "qwen2", "mistral")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True, slots=True)
class LlamaShape:
    """The numbers that decide a Llama-family model's size and speed."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int | None = None  # None: the bundled tokenizer's vocabulary
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    model_type: str = "llama"  # also "qwen2" (q/k/v bias) and "mistral"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(
                f"model_type must be one of {', '.join(MODEL_TYPES)}, got {self.model_type!r}"
            )
        for field in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, field) < 1:
                raise ConfigError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# Small enough that building, saving and loading it takes well under a second.
TINY_TEST = LlamaShape(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
)
# The reference model of shared/guide/benchmarks.md (~106M parameters with a 4096 vocab...
# most of them in the 12 layers, so the figure barely moves with the vocabulary).
REFERENCE_106M = LlamaShape(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=6,
    intermediate_size=3072,
)


def _bundled_tokenizer_dir() -> Path:
    from latlab.assets import bundled_model_path

    return bundled_model_path()


def bundled_tokenizer_info() -> dict[str, Any]:
    """Vocabulary size and bos/eos/pad ids of the bundled tokenizer (read from its JSON)."""
    directory = _bundled_tokenizer_dir()
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    vocab.update({tok["content"]: tok["id"] for tok in data.get("added_tokens", [])})
    special = json.loads((directory / "special_tokens_map.json").read_text(encoding="utf-8"))
    return {
        "vocab_size": max(vocab.values()) + 1,
        "bos_token_id": vocab[special["bos_token"]],
        "eos_token_id": vocab[special["eos_token"]],
        "pad_token_id": vocab[special["pad_token"]],
    }


def build_config(shape: LlamaShape) -> Any:
    """The transformers config for ``shape`` (token ids from the bundled tokenizer)."""
    from transformers import AutoConfig

    info = bundled_tokenizer_info()
    vocab_size = info["vocab_size"] if shape.vocab_size is None else shape.vocab_size
    if vocab_size < info["vocab_size"]:
        raise ConfigError(
            f"vocab_size {vocab_size} is smaller than the bundled tokenizer's "
            f"{info['vocab_size']} tokens; use None or a larger value"
        )
    return AutoConfig.for_model(
        shape.model_type,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        intermediate_size=shape.intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=shape.tie_word_embeddings,
        rope_theta=shape.rope_theta,
        rope_scaling=shape.rope_scaling,
        bos_token_id=info["bos_token_id"],
        eos_token_id=info["eos_token_id"],
        pad_token_id=info["pad_token_id"],
    )


def save_random_llama(
    out_dir: str | os.PathLike[str],
    shape: LlamaShape = TINY_TEST,
    dtype: str = "float32",
    seed: int = 0,
) -> Path:
    """Build a seeded random-weight model of ``shape`` into ``out_dir``; returns the dir.

    The same seed and shape give the same weights. The dir holds config.json,
    model.safetensors, generation_config.json and the bundled tokenizer files.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from latlab.model_files import torch_dtype

    torch_type = torch_dtype(dtype)
    if torch_type == "auto":
        torch_type = torch.float32
    config = build_config(shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.to(torch_type)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer_dir = _bundled_tokenizer_dir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, out / name)
    return out
