"""Shared fixtures: a tiny random Llama (the bundled tokenizer) and held-out text for it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from latlab.testing.random_model import TINY_TEST, save_random_llama

    return save_random_llama(tmp_path_factory.mktemp("tiny") / "model", TINY_TEST)


@pytest.fixture(scope="session")
def heldout_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plain English-ish text the tokenizer knows (stdlib docstrings)."""
    text = "\n\n".join(inspect.getdoc(obj) or "" for obj in (inspect, Path, dict, list, str))
    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """The CI machine has 2 shared cores: one thread keeps these tests fast and steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
