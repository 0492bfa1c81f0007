"""Greedy decoding loops over a transformers causal LM: plain, and prompt-lookup speculative.

The lab drives these loops for the transformers backend so that the baseline and every
candidate go through the same code path; the only thing a recipe changes is the model or the
loop. Both loops yield the tokens of each forward pass as one chunk, which is what a streaming
server would send.

Prompt lookup (n-gram speculation): the last few generated tokens are searched for earlier in
the sequence; the tokens that followed that earlier occurrence are proposed as a draft and
checked in one forward pass. Every accepted token is the argmax the plain loop would have
picked, so the output is the plain greedy output; the win is fewer forward passes when the
text repeats its context (summaries, code edits, extraction).
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from latlab.engine.spec_decode import PromptLookupConfig, accepted_length, find_draft


def _forward_logits(model: Any, token_ids: Sequence[int], cache: Any) -> torch.Tensor:
    """Run ``token_ids`` after what ``cache`` holds; return their logits as (len, vocab)."""
    input_ids = torch.tensor([list(token_ids)], dtype=torch.long, device=model.device)
    out = model(input_ids=input_ids, use_cache=True, **{_cache_kwarg(model): cache})
    return out.logits[0]


def _cache_kwarg(model: Any) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; accept both."""
    forward = getattr(model, "_orig_mod", model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _clip(tokens: list[int], remaining: int, eos_token_ids: Collection[int]) -> list[int]:
    """Cut a chunk at the token budget and just after the first EOS."""
    tokens = tokens[:remaining]
    for i, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[: i + 1]
    return tokens


@torch.inference_mode()
def greedy_chunks(
    model: Any,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_token_ids: Collection[int] = (),
) -> Iterator[list[int]]:
    """Plain greedy decoding with a KV cache: one token per forward pass."""
    if max_new_tokens <= 0:
        return
    cache = _new_cache(model)
    logits = _forward_logits(model, prompt_ids, cache)
    produced = 0
    while True:
        token = int(logits[-1].argmax())
        yield [token]
        produced += 1
        if produced >= max_new_tokens or token in eos_token_ids:
            return
        logits = _forward_logits(model, [token], cache)


@dataclass(slots=True)
class SpeculationStats:
    """Counts that explain a prompt-lookup speedup (or its absence)."""

    forward_passes: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0


@torch.inference_mode()
def prompt_lookup_chunks(
    model: Any,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_token_ids: Collection[int] = (),
    config: PromptLookupConfig | None = None,
    stats: SpeculationStats | None = None,
) -> Iterator[list[int]]:
    """Greedy decoding that verifies prompt-lookup drafts in one forward pass per step."""
    if max_new_tokens <= 0:
        return
    config = config or PromptLookupConfig()
    stats = stats if stats is not None else SpeculationStats()
    cache = _new_cache(model)
    tokens = list(prompt_ids)
    logits = _forward_logits(model, tokens, cache)
    stats.forward_passes += 1
    pending = int(logits[-1].argmax())  # produced and sent, not yet in the cache
    tokens.append(pending)
    produced = 1
    yield [pending]
    while produced < max_new_tokens and pending not in eos_token_ids:
        draft = find_draft(tokens, config, limit=max_new_tokens - produced)
        logits = _forward_logits(model, [pending, *draft], cache)
        predicted = logits.argmax(dim=-1).tolist()
        accepted = accepted_length(draft, predicted)
        stats.forward_passes += 1
        stats.drafted_tokens += len(draft)
        stats.accepted_tokens += accepted
        # Keep the pending token and the accepted draft in the cache; drop rejected positions.
        rejected = len(draft) - accepted
        if rejected:
            cache.crop(-rejected)
        # The token after the last accepted one comes free from the same forward pass.
        chunk = _clip(
            [*draft[:accepted], predicted[accepted]], max_new_tokens - produced, eos_token_ids
        )
        tokens.extend(chunk)
        produced += len(chunk)
        pending = chunk[-1]
        yield chunk
