"""The bundled tiny model: the default for every command that needs a model."""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "tiny-llama"


def bundled_model_path() -> Path:
    """Path of the bundled tiny Llama model (config, safetensors, tokenizer)."""
    return BUNDLED_MODEL_DIR
