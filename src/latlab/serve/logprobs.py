"""Log-probabilities in the shapes OpenAI clients and vLLM's users read.

The engine scores tokens as ``{token_id: Logprob(logprob, rank)}`` per position, the actual
token first (latlab.engine.outputs). This module only reshapes that:

- completions ``logprobs`` (OpenAI legacy): ``tokens``, ``token_logprobs``, ``top_logprobs``
  ({token text: logprob}) and ``text_offset``, over the prompt too with ``echo``;
- chat ``logprobs.content``: per token ``{token, logprob, bytes, top_logprobs: [...]}``;
- vLLM's ``prompt_logprobs``: per prompt token ``None`` (the first) or
  ``{"<token id>": {"logprob", "rank", "decoded_token"}}``, keyed by id so equal-looking tokens
  stay apart (what latlab's HTTP quality gate reads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Decode = Callable[[int], str]


def token_text(tokenizer: Any) -> Decode:
    """One token's text as vLLM reports it (``decode([id])``), cached per id."""
    cache: dict[int, str] = {}

    def decode(token: int) -> str:
        text = cache.get(token)
        if text is None:
            text = cache[token] = tokenizer.decode([token])
        return text

    return decode


def _top(entry: dict[int, Any], count: int) -> list[tuple[int, Any]]:
    """The ``count`` most likely alternatives of a position, best first."""
    ranked = sorted(entry.items(), key=lambda item: item[1].rank)
    return [(t, lp) for t, lp in ranked if lp.rank <= count][:count]


def completion_logprobs(
    tokens: Sequence[int],
    entries: Sequence[dict[int, Any] | None],
    count: int,
    decode: Decode,
    offset: int = 0,
) -> dict[str, Any]:
    """OpenAI's completions ``logprobs`` object for ``tokens`` scored by ``entries``."""
    texts = [decode(t) for t in tokens]
    offsets = []
    at = offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    for token, entry in zip(tokens, entries, strict=True):
        if entry is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(entry[token].logprob)
        top = {decode(t): lp.logprob for t, lp in _top(entry, count)}
        top.setdefault(decode(token), entry[token].logprob)
        top_logprobs.append(top)
    return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": texts,
            "top_logprobs": top_logprobs}  # fmt: skip


def chat_logprobs(
    tokens: Sequence[int], entries: Sequence[dict[int, Any]], count: int, decode: Decode
) -> dict[str, Any]:
    """OpenAI's chat ``logprobs`` object: ``{"content": [...]}``."""
    content = []
    for token, entry in zip(tokens, entries, strict=True):
        content.append({
            **_chat_item(decode(token), entry[token].logprob),
            "top_logprobs": [_chat_item(decode(t), lp.logprob) for t, lp in _top(entry, count)],
        })  # fmt: skip
    return {"content": content}


def _chat_item(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def prompt_logprobs(
    entries: Sequence[dict[int, Any] | None], decode: Decode
) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's ``prompt_logprobs``: by token id, with rank and decoded text."""
    out: list[dict[str, dict[str, Any]] | None] = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        out.append({
            str(t): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": decode(t)}
            for t, lp in entry.items()
        })  # fmt: skip
    return out
