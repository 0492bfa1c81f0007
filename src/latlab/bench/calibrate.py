"""Exact prompt lengths for a run, in the target's own tokens, with or without a tokenizer.

An HTTP target is calibrated on its server (its ``/tokenize`` endpoint or ``usage`` of probe
requests: latlab.bench.server_tokens), which counts BOS and chat template as it will run them;
a local ``--tokenizer`` then only suggests candidate words. In-process targets count with
their own tokenizer. When nothing can count, prompts are common English words of about one
token each, and the result says so. The check at the end builds two prompts and counts them:
a calibration that does not hold is reported, never trusted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from latlab.bench.contract import Target
from latlab.bench.server_tokens import ServerTokenCounter
from latlab.bench.targets import OpenAITarget
from latlab.errors import ConfigError, LatlabError
from latlab.prompt_words import (
    COMMON_WORDS,
    UNCALIBRATED,
    PromptWords,
    calibrate_async,
    calibrate_sync,
    vocabulary_words,
)
from latlab.workload import BenchRequest

_CHECK_WORDS = (17, 61)  # prompt sizes (words) counted to check a calibration


@dataclass(kw_only=True, slots=True)
class PromptSizing:
    """How this run sizes prompts and counts recorded replies."""

    words: PromptWords
    local_count: Callable[[str], int] | None = None  # tokens of a generated text, locally
    server: ServerTokenCounter | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.words.to_dict(), "seconds": round(self.seconds, 3)}


async def prompt_sizing(target: Target) -> PromptSizing:
    """Find the words prompts are built from, as exact as the target allows."""
    t0 = time.perf_counter()
    tokenizer = target.tokenizer
    local = None
    if tokenizer is not None:
        local = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    sizing = PromptSizing(words=UNCALIBRATED, local_count=local)
    if isinstance(target, OpenAITarget):
        sizing.server = ServerTokenCounter(target)
        sizing.words = await _on_server(sizing.server, tokenizer, target.api == "chat")
    elif tokenizer is not None:
        sizing.words = _local(tokenizer, chat=False)
    sizing.seconds = time.perf_counter() - t0
    return sizing


async def _on_server(counter: ServerTokenCounter, tokenizer: Any, chat: bool) -> PromptWords:
    method = await counter.start()
    if method is None:
        if tokenizer is not None:  # the server cannot count: the given tokenizer must do
            return _local(tokenizer, chat, note=f"; {counter.reason}")
        return replace(UNCALIBRATED, source=f"uncalibrated ({counter.reason})")
    candidates = vocabulary_words(tokenizer) if tokenizer is not None else list(COMMON_WORDS)
    try:
        words = await calibrate_async(counter.count, candidates, method)
        return await _checked(words, counter)
    except LatlabError as exc:
        return replace(UNCALIBRATED, source=f"uncalibrated ({exc})")


async def _checked(words: PromptWords, counter: ServerTokenCounter) -> PromptWords:
    """Count two fresh prompts: the calibration holds only if both come out exact."""
    rng = random.Random(len(words.words))
    texts = [words.text(rng, n) for n in _CHECK_WORDS]
    got = await counter.count(texts)
    want = [n + words.offset for n in _CHECK_WORDS]
    probes = words.probes + len(texts)
    if got != want:
        return replace(words, exact=False, probes=probes,
                       source=f"{words.source}, did not hold: {got} tokens for {want}")  # fmt: skip
    return replace(words, probes=probes)


def _local(tokenizer: Any, chat: bool, note: str = "") -> PromptWords:
    """Calibrate with a local tokenizer, counting as a target would: BOS (and the chat
    template for a chat API) included."""

    def count(texts: list[str]) -> list[int]:
        if chat and getattr(tokenizer, "chat_template", None):  # as a server renders a chat
            return [len(tokenizer.encode(_chat_text(tokenizer, t), add_special_tokens=False))
                    for t in texts]  # fmt: skip
        return [len(tokenizer.encode(t)) for t in texts]

    try:
        words = calibrate_sync(count, vocabulary_words(tokenizer), "tokenizer")
    except ConfigError as exc:  # an odd tokenizer: lengths stay approximate, and say why
        return replace(UNCALIBRATED, source=f"uncalibrated ({exc}{note})")
    return replace(words, source=f"tokenizer{note}") if note else words


def _chat_text(tokenizer: Any, content: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


async def resolve_replies(requests: list[BenchRequest], sizing: PromptSizing) -> None:
    """Set each ShareGPT request's output length to its recorded reply's token count.

    Counted on the server when the client has no tokenizer (``build_requests`` counts
    locally otherwise); refused in one line when nothing can count: a guessed length would
    measure a different workload without saying so.
    """
    todo = [r for r in requests if r.reply is not None]
    if not todo:
        return
    server = sizing.server
    if server is None or server.method is None:
        why = f" ({server.reason})" if server is not None and server.reason else ""
        raise ConfigError(
            "a ShareGPT reply's token count is its output length, and nothing here can count "
            f"it{why}: pass --tokenizer"
        )
    texts = [r.reply or "" for r in todo]
    counts = await server.count_plain(texts)
    if counts is None:  # probes count a prompt: take off what the server adds to each
        counts = [n - sizing.words.offset for n in await server.count(texts)]
    for req, n in zip(todo, counts, strict=True):
        req.max_tokens, req.reply = max(1, n), None
