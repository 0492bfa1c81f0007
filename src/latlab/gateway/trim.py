"""Prompt trimming to a token budget: keep the system message and the newest turns.

One implementation, used by ``latlab gateway`` (``--trim-to`` or the ``x-latlab-trim-to``
header) and by the optimize lab's prompt-trim recipe (token ids: the last ``budget`` tokens).

Tokens are counted with the model's own tokenizer (``tokenizer.json`` through the torch-free
``tokenizers`` package) when one can be found; otherwise the count is an estimate of four
characters per token and every trimmed response says so. A chat message also costs a few
template tokens of its own (role markers); ``TEMPLATE_TOKENS_PER_MESSAGE`` stands for them.
Nothing is ever trimmed silently: the result carries the number of tokens removed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from latlab.errors import ConfigError

CHARS_PER_TOKEN = 4  # the estimate used when no tokenizer can be loaded
TEMPLATE_TOKENS_PER_MESSAGE = 4  # role markers and separators a chat template adds
_LEADING_ROLES = ("system", "developer")


class TrimError(ConfigError):
    """The budget cannot hold even the parts trimming must keep."""


class TokenCounter(Protocol):
    name: str  # "tokenizer:<path>" or "estimate:4-chars-per-token"
    exact: bool

    def count(self, text: str) -> int: ...

    def keep_last(self, text: str, tokens: int) -> str:
        """The end of ``text`` holding at most ``tokens`` tokens."""


class EstimatedCounter:
    """Four characters per token: a stated estimate, used only when no tokenizer loads."""

    name = f"estimate:{CHARS_PER_TOKEN}-chars-per-token"
    exact = False

    def count(self, text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def keep_last(self, text: str, tokens: int) -> str:
        return text[-tokens * CHARS_PER_TOKEN :] if tokens > 0 else ""


class TokenizerCounter:
    """Counts with a Hugging Face ``tokenizer.json`` (no torch, no transformers)."""

    exact = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from tokenizers import Tokenizer

        self.path = Path(path)
        self._tok = Tokenizer.from_file(str(self.path))
        self.name = f"tokenizer:{self.path.parent.name or self.path}"

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def keep_last(self, text: str, tokens: int) -> str:
        if tokens <= 0:
            return ""
        enc = self._tok.encode(text, add_special_tokens=False)
        if len(enc.ids) <= tokens:
            return text
        return text[enc.offsets[len(enc.ids) - tokens][0] :]


def find_tokenizer_file(model: str | None) -> Path | None:
    """``tokenizer.json`` of a local model folder or of a Hub id already in the local cache."""
    if not model:
        return None
    local = Path(model).expanduser()
    if local.is_file() and local.name == "tokenizer.json":
        return local
    if (local / "tokenizer.json").is_file():
        return local / "tokenizer.json"
    if model.count("/") != 1 or local.exists():
        return None
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    snapshots = Path(hub) / ("models--" + model.replace("/", "--")) / "snapshots"
    found = sorted(snapshots.glob("*/tokenizer.json")) if snapshots.is_dir() else []
    return found[-1] if found else None


def load_counter(model: str | None) -> TokenCounter:
    """The model's tokenizer when it can be found and loaded, else the stated estimate."""
    path = find_tokenizer_file(model)
    if path is not None:
        try:
            return TokenizerCounter(path)
        except Exception:  # a corrupt or unsupported file: estimating is still honest
            return EstimatedCounter()
    return EstimatedCounter()


@dataclass(kw_only=True, slots=True)
class Trimmed:
    """What trimming did: the new prompt or messages, and the tokens it removed."""

    value: Any
    removed_tokens: int
    kept_tokens: int
    counted_by: str


def trim_token_ids(ids: list[int], budget: int) -> list[int]:
    """The last ``budget`` tokens of a tokenized prompt (what the lab's recipe sends)."""
    if budget < 1:
        raise TrimError(f"the trim budget must be at least 1 token, not {budget}")
    return list(ids[-budget:])


def trim_prompt(prompt: str, budget: int, counter: TokenCounter) -> Trimmed:
    """A completion prompt cut to its newest ``budget`` tokens (the end is what is continued)."""
    if budget < 1:
        raise TrimError(f"the trim budget must be at least 1 token, not {budget}")
    total = counter.count(prompt)
    if total <= budget:
        return Trimmed(value=prompt, removed_tokens=0, kept_tokens=total, counted_by=counter.name)
    kept = counter.keep_last(prompt, budget)
    kept_tokens = counter.count(kept)
    return Trimmed(
        value=kept,
        removed_tokens=total - kept_tokens,
        kept_tokens=kept_tokens,
        counted_by=counter.name,
    )


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def trim_messages(messages: list[dict[str, Any]], budget: int, counter: TokenCounter) -> Trimmed:
    """Keep the leading system messages and the newest turns that fit in ``budget`` tokens.

    Turns go whole, newest first; the newest message is always kept, cut to its end if it alone
    is too long. A kept history never starts with an assistant or tool message that answered a
    dropped one. TrimError when the system messages alone do not fit.
    """
    if budget < 1:
        raise TrimError(f"the trim budget must be at least 1 token, not {budget}")
    costs = [counter.count(message_text(m)) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages]
    total = sum(costs)
    if total <= budget:
        return Trimmed(value=messages, removed_tokens=0, kept_tokens=total, counted_by=counter.name)
    lead = 0
    while lead < len(messages) - 1 and messages[lead].get("role") in _LEADING_ROLES:
        lead += 1
    room = budget - sum(costs[:lead])
    if room < TEMPLATE_TOKENS_PER_MESSAGE + 1:
        raise TrimError(
            f"the system message(s) take {sum(costs[:lead])} tokens ({counter.name}); a trim "
            f"budget of {budget} leaves no room for the conversation: raise the budget"
        )
    kept = _newest_that_fit(messages, costs, lead, room, counter)
    kept_tokens = sum(costs[:lead]) + sum(
        counter.count(message_text(m)) + TEMPLATE_TOKENS_PER_MESSAGE for m in kept
    )
    return Trimmed(
        value=list(messages[:lead]) + kept,
        removed_tokens=total - kept_tokens,
        kept_tokens=kept_tokens,
        counted_by=counter.name,
    )


def _newest_that_fit(
    messages: list[dict[str, Any]], costs: list[int], lead: int, room: int, counter: TokenCounter
) -> list[dict[str, Any]]:
    start = len(messages)
    used = 0
    while start > lead and used + costs[start - 1] <= room:
        start -= 1
        used += costs[start]
    if start == len(messages):  # the newest message alone is too long: keep its end
        last = dict(messages[-1])
        last["content"] = counter.keep_last(message_text(last), room - TEMPLATE_TOKENS_PER_MESSAGE)
        return [last]
    while start < len(messages) - 1 and messages[start].get("role") in ("assistant", "tool"):
        start += 1
    return list(messages[start:])


class Trimmer:
    """The gateway's trimming: budget from the flag or the ``x-latlab-trim-to`` header.

    Counters are loaded once per model (in a thread: reading a tokenizer takes a moment) and the
    gateway's log says once per model whether it counts exactly or estimates.
    """

    HEADER = "x-latlab-trim-to"

    def __init__(self, tokenizer: str | None, *, default_budget: int | None, metrics: Any) -> None:
        self.tokenizer = tokenizer
        self.default_budget = default_budget
        self.metrics = metrics
        self._counters: dict[str | None, TokenCounter] = {}

    def budget(self, headers: dict[str, str]) -> int | None:
        text = headers.get(self.HEADER)
        if text is None:
            return self.default_budget
        if not text.strip().isdigit() or int(text) < 1:
            raise TrimError(f"{self.HEADER} must be a positive number of tokens, not {text!r}")
        return int(text)

    async def counter(self, model_root: str | None) -> TokenCounter:
        root = self.tokenizer or model_root
        if root not in self._counters:
            counter = await asyncio.to_thread(load_counter, root)
            self._counters[root] = counter
            how = "exactly" if counter.exact else "by estimate (no tokenizer found)"
            logging.getLogger("latlab.gateway").warning(
                "trimming counts tokens for %s %s: %s", root or "the model", how, counter.name
            )
        return self._counters[root]

    async def apply(
        self, body: dict[str, Any], headers: dict[str, str], model_root: str | None
    ) -> tuple[dict[str, str], bool]:
        """Trim ``body`` in place; (response headers saying what happened, whether it changed).

        TrimError for a bad budget header or a budget too small for the system message.
        """
        budget = self.budget(headers)
        if budget is None:
            return {}, False
        counter = await self.counter(model_root)
        result = self._trim(body, budget, counter)
        if result is None:
            return {"x-latlab-trim": "skipped: batched prompts are not trimmed"}, False
        self.metrics.trimmed_tokens.inc(result.removed_tokens)
        out = {
            "x-latlab-trimmed-tokens": str(result.removed_tokens),
            "x-latlab-token-count": result.counted_by,
        }
        return out, result.removed_tokens > 0

    @staticmethod
    def _trim(body: dict[str, Any], budget: int, counter: TokenCounter) -> Trimmed | None:
        if isinstance(body.get("messages"), list):
            result = trim_messages(body["messages"], budget, counter)
            body["messages"] = result.value
            return result
        prompt = body.get("prompt")
        single = isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list)
        if single:
            prompt = prompt[0]
        if isinstance(prompt, str):
            result = trim_prompt(prompt, budget, counter)
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            ids = trim_token_ids(prompt, budget)
            result = Trimmed(value=ids, removed_tokens=len(prompt) - len(ids),
                             kept_tokens=len(ids), counted_by="token-ids")  # fmt: skip
        else:
            return None
        body["prompt"] = [result.value] if single else result.value
        return result
