"""Shared fixtures: small random-weight models on disk and a transformers greedy reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from latlab.testing.random_model import TINY_TEST, LlamaShape, save_random_llama

QWEN2_SHAPE = dataclasses.replace(TINY_TEST, model_type="qwen2")
LLAMA3_TIED_SHAPE = LlamaShape(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=1,
    intermediate_size=96,
    tie_word_embeddings=True,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GQA Llama (4 heads, 2 KV heads), random fp32 weights."""
    return save_random_llama(tmp_path_factory.mktemp("tiny"), TINY_TEST, seed=1)


@pytest.fixture(scope="session")
def qwen2_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2 with non-zero q/k/v biases (random init leaves them at zero, which tests nothing)."""
    from safetensors.torch import load_file, save_file

    out = save_random_llama(tmp_path_factory.mktemp("qwen2"), QWEN2_SHAPE, seed=2)
    weights = out / "model.safetensors"
    state = load_file(str(weights))
    gen = torch.Generator().manual_seed(0)
    for name, tensor in state.items():
        if name.endswith("_proj.bias"):
            state[name] = torch.randn(tensor.shape, generator=gen) * 0.5
    assert any(n.endswith("q_proj.bias") for n in state)
    save_file(state, str(weights), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def llama3_tied_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-3 rope scaling, tied embeddings, 4:1 GQA."""
    return save_random_llama(tmp_path_factory.mktemp("llama3"), LLAMA3_TIED_SHAPE, seed=3)
