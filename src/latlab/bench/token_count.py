"""How many tokens a reply carried, from whom, and why: the source rule with its sanity checks.

The server's ``usage`` is preferred, but never believed blindly: a count it could not have
produced (negative, not an integer, more than ``max_tokens``, fewer than the chunks that
carried text, more than the bytes of text it sent could hold; a prompt count beyond what the
prompt's bytes and a chat template could make) is rejected, the record says why, and the count
comes from the client tokenizer or the chunks instead. A server that reported 1,000,000
completion tokens for 2 chunks would otherwise claim billions of tokens per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from latlab.bench.openai_reply import Reply, reconcile
from latlab.metrics import RequestRecord, distribute_tokens


@dataclass(kw_only=True, slots=True)
class Seen:
    """What the client saw of a reply: the bounds a truthful usage must respect."""

    text: str
    text_chunks: int  # chunks that carried visible text (each carried at least one token)
    arrivals: int  # token-carrying chunks, empty ones included (each may add a textless token)
    max_tokens: int
    prompt_bytes: int | None = None  # UTF-8 bytes of the prompt text sent (None: token ids)


# Tokens a chat template, BOS/EOS and special tokens may add beyond one token per prompt byte
# (real templates add tens; a system prompt a template inserts, a few hundred).
TEMPLATE_ALLOWANCE = 1024


@dataclass(kw_only=True, slots=True)
class CheckedUsage:
    completion: int | None = None
    prompt: int | None = None
    cached: int | None = None
    rejected: dict[str, str] = field(default_factory=dict)  # problem -> detail with numbers


def _count(value: Any) -> int | None:
    """A token count as servers send it: a non-negative integer (JSON bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _check_completion(value: Any, seen: Seen, out: CheckedUsage) -> None:
    n = _count(value)
    bound = len(seen.text.encode()) + max(seen.arrivals, 1)  # a byte per token, plus EOS-likes
    if n is None:
        out.rejected["completion_tokens not a count"] = f"completion_tokens {value!r}"
    elif n > seen.max_tokens:
        out.rejected["completion_tokens above max_tokens"] = (
            f"completion_tokens {n} > max_tokens {seen.max_tokens}"
        )
    elif n < seen.text_chunks:
        out.rejected["completion_tokens below the chunks with text"] = (
            f"completion_tokens {n} < {seen.text_chunks} chunks with text"
        )
    elif n > bound:
        out.rejected["completion_tokens beyond the text"] = (
            f"completion_tokens {n} > {bound} (bytes of text + token chunks)"
        )
    else:
        out.completion = n


def _check_prompt(value: Any, seen: Seen, out: CheckedUsage) -> None:
    prompt = _count(value)
    if not prompt:  # every prompt is at least one token
        out.rejected["prompt_tokens not a count"] = f"prompt_tokens {value!r}"
    elif seen.prompt_bytes is not None and prompt > seen.prompt_bytes + TEMPLATE_ALLOWANCE:
        out.rejected["prompt_tokens beyond the prompt"] = (
            f"prompt_tokens {prompt} > {seen.prompt_bytes} prompt bytes + {TEMPLATE_ALLOWANCE}"
        )
    else:
        out.prompt = prompt


def _check_total(usage: dict[str, Any], out: CheckedUsage) -> None:
    """``total_tokens`` is not used, but one that is not the sum says the usage is made up."""
    total, parts = usage.get("total_tokens"), (usage.get("prompt_tokens"),
                                                usage.get("completion_tokens"))  # fmt: skip
    if total is None or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        return
    if total != sum(parts):  # type: ignore[arg-type]
        out.rejected["total_tokens not prompt + completion"] = (
            f"total_tokens {total!r} != {parts[0]} + {parts[1]}"
        )


def check_usage(usage: dict[str, Any] | None, seen: Seen) -> CheckedUsage:
    """The usage figures that survive the checks; the others named in ``rejected``."""
    out = CheckedUsage()
    if not isinstance(usage, dict):
        return out
    if "completion_tokens" in usage:
        _check_completion(usage["completion_tokens"], seen, out)
    if "prompt_tokens" in usage:
        _check_prompt(usage["prompt_tokens"], seen, out)
    _check_total(usage, out)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        cached = _count(details["cached_tokens"])
        if cached is None or (out.prompt is not None and cached > out.prompt):
            out.rejected["cached_tokens impossible"] = (
                f"cached_tokens {details['cached_tokens']!r} of {out.prompt} prompt tokens"
            )
        else:
            out.cached = cached
    return out


def count_reply(rec: RequestRecord, reply: Reply, seen: Seen, tokenizer: Any | None) -> None:
    """Fill ``rec``'s token figures from a reply: the source rule, checked.

    Sources, most trusted first: the server's usage (when it passes the checks), the client
    tokenizer over the whole text, else one token per token-carrying chunk. A non-streamed
    reply without either has no known count (``None``, source ``unknown``).
    """
    checked = check_usage(reply.usage, seen)
    client = None
    if tokenizer is not None:
        client = len(tokenizer.encode(seen.text, add_special_tokens=False))
    streamed = bool(reply.arrivals)
    if checked.completion is not None:
        tokens, source = checked.completion, "usage"
        rec.token_count_mismatch = client is not None and client != tokens
    elif client is not None:
        tokens, source = client, "tokenizer"
    elif streamed:  # without usage, a chunk that only closes the stream carried nothing
        while (i := next((j for j, m in enumerate(reply.maybe) if m), None)) is not None:
            reply.drop(i)
        tokens, source = len(reply.arrivals), "chunks"
    else:
        tokens, source = None, "unknown"
    if streamed and tokens is not None:
        reconcile(reply, tokens)
        rec.chunk_ns = list(reply.arrivals)
        rec.chunk_tokens = distribute_tokens(tokens, [len(t) for t in reply.texts])
        rec.first_text_chunk = reply.first_text
        rec.empty_chunks = sum(1 for t in reply.texts if not t)
    rec.output_tokens, rec.output_tokens_source = tokens, source
    rec.prompt_tokens, rec.cached_tokens = checked.prompt, checked.cached
    rec.finish_reason = reply.finish_reason
    rec.usage_rejected = checked.rejected
    rec.reply_problems.update(reply.problems)
