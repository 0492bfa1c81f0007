"""Exact prompt lengths for a run: one-token words found with the target's own tokenizer.

In-process targets and ``--tokenizer`` count locally. Without a local tokenizer the words are
common English words of about one token each and nothing is exact (prompt lengths are then
only what the server's ``usage`` reports afterwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from latlab.errors import ConfigError
from latlab.prompt_words import UNCALIBRATED, PromptWords, from_tokenizer
from latlab.workload import BenchRequest


def prompt_words(target: Any) -> PromptWords:
    """The words prompts are built from, as exact as the target allows."""
    tokenizer = getattr(target, "tokenizer", None)
    if tokenizer is None:
        return UNCALIBRATED
    try:
        return from_tokenizer(tokenizer)
    except ConfigError as exc:  # an odd tokenizer: lengths stay approximate, and say why
        return replace(UNCALIBRATED, source=f"uncalibrated ({exc})")


def text_counter(target: Any) -> Callable[[str], int] | None:
    """Tokens of a generated text (no special tokens), when a local tokenizer can say."""
    tokenizer = getattr(target, "tokenizer", None)
    if tokenizer is None:
        return None
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def resolve_replies(requests: list[BenchRequest]) -> None:
    """Refuse recorded replies nobody could count (their length would be a guess)."""
    if any(r.reply is not None for r in requests):
        raise ConfigError(
            "a ShareGPT reply's token count is its output length, and nothing here can count "
            "it: pass --tokenizer"
        )
