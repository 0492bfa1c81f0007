"""transformers greedy reference and prompt builders for the engine tests."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from latlab.engine.kernels import Kernel


@functools.cache
def _hf_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@functools.cache
def _hf_greedy_one(model_dir: str, prompt: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    model = _hf_model(model_dir)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return tuple(out[0, len(prompt) :].tolist())


def hf_greedy(model_dir: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """transformers ``generate`` (fp32, greedy, one prompt at a time: no padding effects).

    It stops at EOS (included), as the engine does with ``ignore_eos=False``; forcing a length
    with ``min_new_tokens`` would instead forbid EOS, which ``ignore_eos`` does not.
    """
    return [list(_hf_greedy_one(str(model_dir), tuple(p), max_new_tokens)) for p in prompts]


def mixed_prompts(count: int = 6, vocab: int = 4000, seed: int = 0) -> list[list[int]]:
    """Prompts of mixed lengths (3..40 tokens), deterministic."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [3, 40, 9, 17, 1, 26, 33, 5][:count]
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


def built_or_skip(kernel: Callable[..., Kernel]) -> Callable[..., torch.Tensor]:
    """A native kernel's function, waiting for setup's background build (or building it);
    a skip with its reason where it cannot be built here."""
    built = kernel(wait=True)
    if built.fn is None:
        pytest.skip(built.reason)
    return built.fn


def available_or_skip(getter: Callable[..., tuple[Any, str]]) -> Any:
    """A native kernel object from a ``(kernel or None, reason)`` getter, built if needed; a
    skip with the reason where this machine cannot have it (no compiler, no AMX)."""
    built, reason = getter(wait=True)
    if built is None:
        pytest.skip(reason)
    return built
