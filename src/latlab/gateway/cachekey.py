"""The response cache's key and its rules: what is cacheable, and what the key covers.

One implementation, used by ``latlab gateway`` and by the optimize lab's response-cache recipe.

The key is a SHA-256 over everything that can change the output: the endpoint, the tenant, and
the whole request body (model, prompt or messages, every sampling field, seed, stop, max
tokens, logprobs options, stream options), minus the few fields that only label a request
(``user``, ``request_id``). Unknown fields are kept: a vLLM extension the gateway has never
heard of may well change the output, and a miss costs less than a wrong answer. The tenant is
part of the key so two teams never share (and cannot probe) each other's entries, the failure
LiteLLM's shared keys had (LiteLLM #29955).

Only deterministic requests are cacheable (temperature 0, or a fixed seed): two identical
sampled requests are meant to get different answers. A key may opt in to caching sampled
requests; ``Cache-Control: no-store`` / ``no-cache`` on a request turn reading and writing off.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Bump when the key's recipe changes, so old entries are never read under a new meaning.
KEY_VERSION = 1
# Fields that label a request without changing its output.
LABEL_FIELDS = frozenset({"user", "request_id"})


def cache_key(endpoint: str, body: Mapping[str, Any], *, tenant: str = "") -> str:
    """Hex SHA-256 of ``endpoint``, ``tenant`` and the output-relevant fields of ``body``."""
    fields = {k: v for k, v in body.items() if k not in LABEL_FIELDS}
    blob = json.dumps(
        [KEY_VERSION, endpoint, tenant, fields],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def is_deterministic(body: Mapping[str, Any]) -> bool:
    """True for greedy requests (temperature 0) and seeded ones; OpenAI's default is 1."""
    temperature = body.get("temperature", 1.0)
    number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
    if number and temperature == 0:
        return True
    seed = body.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


@dataclass(kw_only=True, slots=True, frozen=True)
class CacheControl:
    """A request's ``Cache-Control`` directives that the gateway honours."""

    no_store: bool = False  # neither read nor write the cache
    no_cache: bool = False  # do not answer from the cache; a fresh answer may be stored
    max_age_s: float | None = None  # accept a cached answer only if it is at most this old

    @classmethod
    def parse(cls, header: str | None) -> CacheControl:
        if not header:
            return _NO_DIRECTIVES
        no_store = no_cache = False
        max_age: float | None = None
        for part in header.lower().split(","):
            name, _, value = part.strip().partition("=")
            if name == "no-store":
                no_store = True
            elif name == "no-cache":
                no_cache = True
            elif name == "max-age" and value.strip().strip('"').isdigit():
                max_age = float(value.strip().strip('"'))
        return cls(no_store=no_store, no_cache=no_cache, max_age_s=max_age)

    @property
    def may_read(self) -> bool:
        return not (self.no_store or self.no_cache)

    @property
    def may_write(self) -> bool:
        return not self.no_store


_NO_DIRECTIVES = CacheControl()
