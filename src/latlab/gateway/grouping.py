"""Which requests share a prompt prefix: the key that prefix-aware routing and grouping use.

One implementation, used by ``latlab gateway --route prefix`` (requests with the same key go to
the same upstream, whose prefix cache then holds their common start) and by the optimize lab's
group-by-prefix recipe (requests with the same key are sent together).

The key is a hash of the prompt's leading block: ``prefix_chars`` characters of text (the chat
messages flattened with their roles), or ``prefix_tokens`` token ids. Characters, not tokens, on
the gateway's hot path, as SGLang's router and the Gateway API inference extension do: no
tokenizer call per request. A prompt shorter than one block has no key (None): there is no
prefix worth keeping together, and the router falls back to least-load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

DEFAULT_PREFIX_CHARS = 256  # about 64 tokens of English text
T = TypeVar("T")


def prompt_text(body: Mapping[str, Any]) -> str | list[int] | None:
    """The prompt of an OpenAI request as one string (chat: role-tagged), or its token ids."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
            parts.append(f"{m.get('role', '')}\x1f{content or ''}\x1e")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return prompt
    return None


def prefix_key(prompt: str | Sequence[int] | None, *, block: int) -> str | None:
    """Hash of the first ``block`` characters (or token ids); None when the prompt is shorter."""
    if prompt is None or block < 1 or len(prompt) < block:
        return None
    head = prompt[:block]
    data = head.encode() if isinstance(head, str) else ",".join(map(str, head)).encode()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def group_by_prefix(
    items: Iterable[T], prompt_of: Callable[[T], str | Sequence[int]], *, block: int
) -> list[list[T]]:
    """Items grouped by the key of their prompt's leading block, in order of first appearance.

    Items without a key (prompts shorter than a block) each form a group of their own.
    """
    groups: dict[Hashable, list[T]] = {}
    for i, item in enumerate(items):
        key = prefix_key(prompt_of(item), block=block)
        groups.setdefault(key if key is not None else ("alone", i), []).append(item)
    return list(groups.values())
