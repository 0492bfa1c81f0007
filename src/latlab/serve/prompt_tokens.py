"""Counting a prompt's tokens only as far as the context allows.

A prompt beyond the model's context is refused anyway, so tokenizing all of it first is work
any client can make the server do for nothing: the largest chat the guard lets through (1,024
messages of 100 characters) renders to 24,579 tokens, about 80 ms of tokenizer CPU per request,
to be refused by a model with a 2,048-token context. On a small machine that CPU is taken from
the engine, so a client sending such requests back to back slowed everyone's streams (issue 18).

``count_past`` tokenizes a long text in pieces and stops once the count passes the limit. The
count must never exceed the whole text's (a prompt that fits must never be refused), so pieces
are cut only where the tokenizer provably starts afresh:

- before an added token (``<|eos|>``, ``<|user|>``): the tokenizer splits those out of the text
  before anything else, so the text on either side is tokenized on its own anyway;
- before a space that follows a non-space, for byte-level BPE whose split regex is GPT-2's
  (the bundled model, GPT-2, ...) or the cl100k / Llama 3 / Qwen2 one: no alternative of those
  regexes matches a non-space followed by a space, every character starts a match, and nothing
  looks behind, so the regex's pieces on either side of such a cut are the whole text's, and
  BPE never merges across its pieces.

With those cuts the pieces' tokens, one after another, are exactly the whole text's tokens
(tests/serve/test_prompt_tokens.py checks it on random texts). Tokenizers whose pipeline is not
one of those (a normalizer other than NFC, another pre-tokenizer, BPE dropout, added tokens that
strip spaces) get no cutter: their prompts are tokenized whole, as before. /tokenize never uses
this: it reports the exact ids, as vLLM's does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The split regexes known to never match a non-space followed by a space (see above).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CL100K_LIKE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|{digits}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
KNOWN_SPLITS = frozenset(
    {
        _CL100K_LIKE.replace("{digits}", r"\p{N}{1,3}"),  # cl100k, Llama 3
        _CL100K_LIKE.replace("{digits}", r"\p{N}"),  # Qwen2
    }
)
# Python's \S is narrower than the tokenizers' (oniguruma's) \S: every character the split
# regexes count as whitespace is whitespace to Python too, so a Python non-space is theirs too.
_SPACE_CUT = re.compile(r"(?<=\S) ")
# The first piece covers about this many characters per token of the limit (English averages
# 4-5), and no piece is shorter than MIN_PIECE_CHARS (a tokenizer call costs ~20 us on its own).
CHARS_PER_TOKEN = 4
MIN_PIECE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Cutter:
    """Where a tokenizer's input can be cut without changing its tokens."""

    added: re.Pattern[str] | None  # the added tokens, longest first (leftmost-longest, as theirs)
    specials: int  # tokens ``add_special_tokens=True`` adds (BOS, ...)

    def cuts(self, text: str) -> _Cuts:
        """The cut positions of ``text``, found as far as they are asked for."""
        return _Cuts(text, self.added.finditer(text) if self.added else iter(()))


class _Cuts:
    """Cut positions of one text, searched forward only."""

    def __init__(self, text: str, added: Iterator[re.Match[str]]) -> None:
        self._text = text
        self._added = added  # matched from the start, so never from inside another added token
        self._next_added = -1

    def at_or_after(self, pos: int) -> int:
        """The first cut at or after ``pos`` (the text's end when there is none)."""
        end = len(self._text)
        if pos >= end:
            return end
        while self._next_added < pos:
            match = next(self._added, None)
            self._next_added = end if match is None else match.start()
        space = _SPACE_CUT.search(self._text, pos)
        return min(end, self._next_added, space.start() if space else end)


def cutter_for(tokenizer: Any) -> Cutter | None:
    """A ``Cutter`` for a transformers fast tokenizer whose pipeline is known to keep its
    tokens across the cuts, else None (then only whole texts are tokenized)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not _known_pipeline(backend):
        return None
    added = list(backend.get_added_tokens_decoder().values())
    if any(t.lstrip or t.rstrip or t.single_word or _has_space(t.content) for t in added):
        return None  # a token that eats neighbouring spaces would change across a space cut
    if len({t.normalized for t in added}) > 1:
        return None  # matched in two passes: a single leftmost-longest scan may disagree
    if added and added[0].normalized and backend.normalizer is not None:
        return None  # matched in the normalized text, not in the text the cuts are found in
    try:
        specials = int(tokenizer.num_special_tokens_to_add(False))
    except Exception:
        return None
    contents = sorted({t.content for t in added if t.content}, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, contents))) if contents else None
    return Cutter(added=pattern, specials=specials)


def _known_pipeline(backend: Any) -> bool:
    model = backend.model
    if type(model).__name__ != "BPE" or getattr(model, "dropout", None):
        return False  # dropout: the same text tokenizes differently from call to call
    normalizer = _state(backend.normalizer)
    if normalizer is not None and normalizer.get("type") != "NFC":
        return False  # NFC composes nothing with a space nor across one; others may
    return _splits_at_spaces(_state(backend.pre_tokenizer))


def _splits_at_spaces(pre: dict[str, Any] | None) -> bool:
    """Whether the pre-tokenizer is byte-level with one of the known split regexes."""
    if pre is None:
        return False
    if pre.get("type") == "ByteLevel":
        return bool(pre.get("use_regex")) and not pre.get("add_prefix_space")
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return False
    split, byte_level = steps
    return (
        split.get("type") == "Split"
        and split.get("pattern", {}).get("Regex") in KNOWN_SPLITS | {GPT2_SPLIT}
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and byte_level.get("type") == "ByteLevel"
        and not byte_level.get("use_regex")
        and not byte_level.get("add_prefix_space")
    )


def _state(component: Any) -> dict[str, Any] | None:
    return None if component is None else json.loads(component.__getstate__())


def _has_space(text: str) -> bool:
    return any(c.isspace() for c in text)


def count_past(
    tokenizer: Any,
    cutter: Cutter,
    text: str,
    limit: int,
    *,
    add_special_tokens: bool,
    min_piece: int = MIN_PIECE_CHARS,
) -> int | None:
    """The tokens counted once they pass ``limit`` (so the whole text has at least that many),
    or None when the text has at most ``limit`` tokens or is short enough to tokenize whole.

    Tokenizes at most about ``limit`` tokens plus one piece, whatever the text's length.
    ``min_piece`` (characters) is lowered by tests only, to cut short texts many times.
    """
    count = cutter.specials if add_special_tokens else 0
    cuts = cutter.cuts(text)
    start = 0
    while start < len(text):
        want = max(min_piece, CHARS_PER_TOKEN * (limit + 1 - count))
        end = cuts.at_or_after(start + want)
        if start == 0 and end == len(text):
            return None  # one piece: the caller's whole encode is the count
        count += len(tokenizer.encode(text[start:end], add_special_tokens=False))
        if count > limit:
            return count
        start = end
    return None
