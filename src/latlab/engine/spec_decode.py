"""Prompt-lookup speculative decoding: n-gram drafts from the sequence's own tokens.

The trailing n tokens of a sequence are searched for earlier in it (prompt and output); the
tokens that followed that earlier occurrence become the draft. The model runner then runs the
last token and the draft in one forward pass, and every draft token that equals the greedy
argmax at its position is accepted, plus the token after the last accepted one for free. The
output is therefore the plain greedy output (exactly in float32; in bf16 up to the rounding of
near-tied tokens, as with any change of batch shape: docs/engine.md); random requests are
verified by speculative sampling instead (``Sampler.verify_draft``). What changes is how many
forward passes it takes, which pays when a decode step is memory-bound (small batches) and the
text repeats its context (summaries, code edits, extraction, chat that quotes the prompt).

Pure Python without torch, so the transformers loop in ``latlab.optimize`` uses it too.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from latlab.errors import ConfigError

_ITEM = array("I").itemsize  # token ids as 4-byte items: bytes.find does the scanning in C


@dataclass(slots=True, frozen=True)
class PromptLookupConfig:
    """How drafts are found: n-gram sizes searched (longest first) and the draft length."""

    num_draft_tokens: int = 8
    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if self.num_draft_tokens < 1:
            raise ConfigError(f"num_draft_tokens must be >= 1, got {self.num_draft_tokens}")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ConfigError(
                f"need 1 <= min_ngram <= max_ngram, got min {self.min_ngram}, max {self.max_ngram}"
            )


def find_draft(
    tokens: Sequence[int], config: PromptLookupConfig, limit: int | None = None
) -> list[int]:
    """Tokens that followed the earliest earlier occurrence of the sequence's trailing n-gram.

    The earliest occurrence has the longest continuation before the sequence end; a recent,
    overlapping one (inside a repetition loop) would draft only a token or two. ``limit``
    caps the draft below ``config.num_draft_tokens`` (what is left of max_tokens, the step's
    token budget). Returns [] when nothing matches.
    """
    want = config.num_draft_tokens if limit is None else min(limit, config.num_draft_tokens)
    length = len(tokens)
    if want < 1 or length < 2:
        return []
    data = array("I", tokens).tobytes()
    for n in range(min(config.max_ngram, length - 1), config.min_ngram - 1, -1):
        start = _first_aligned(data, data[(length - n) * _ITEM :], (length - 1) * _ITEM)
        if start is not None:
            follow = start + n
            return list(tokens[follow : follow + want])
    return []


def _first_aligned(data: bytes, needle: bytes, end: int) -> int | None:
    """Token index of the first occurrence of ``needle`` in ``data[:end]`` on a token boundary."""
    pos = data.find(needle, 0, end)
    while pos != -1:
        if pos % _ITEM == 0:
            return pos // _ITEM
        pos = data.find(needle, pos + 1, end)
    return None


def accepted_length(draft: Sequence[int], predicted: Sequence[int]) -> int:
    """How many leading draft tokens equal the model's greedy choice at their position.

    ``predicted[i]`` is the argmax after the token before ``draft[i]``.
    """
    accepted = 0
    while accepted < len(draft) and predicted[accepted] == draft[accepted]:
        accepted += 1
    return accepted
