"""Shared fixtures: a small random 4-layer Llama (bundled tokenizer) and text to calibrate on."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from latlab.testing.random_model import LlamaShape, save_random_llama

FOUR_LAYERS = LlamaShape(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    tie_word_embeddings=True,
)


@pytest.fixture(scope="session")
def four_layer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = save_random_llama(tmp_path_factory.mktemp("four") / "model", FOUR_LAYERS)
    (out / "heldout.txt").write_text(_docs(Path, dict, list), encoding="utf-8")
    return out


def _docs(*objects: object) -> str:
    return "\n\n".join(inspect.getdoc(obj) or "" for obj in objects)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calibration/training text the tokenizer knows, apart from the held-out text."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(_docs(inspect, str, int, float, tuple, set, Exception) * 2, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def docs_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 100 KB of stdlib docstrings (held-out text above excluded): enough to train on."""
    import argparse
    import collections
    import json
    import os
    import re

    docs = [
        inspect.getdoc(member) or ""
        for module in (argparse, collections, json, os, re, inspect)
        for _, member in inspect.getmembers(module)
        if callable(member) and member not in (Path, dict, list)
    ]
    path = tmp_path_factory.mktemp("docs") / "docs.txt"
    path.write_text("\n\n".join(d for d in docs if len(d) > 40), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """The CI machine has 2 shared cores: one thread keeps these tests fast and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
