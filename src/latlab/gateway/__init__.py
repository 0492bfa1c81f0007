"""``latlab gateway``: response cache, coalescing, trimming, routing, keys and limits, as a service.

The request-level pieces are plain functions usable from Python, and the optimize lab's
request-level recipes call the same ones:

- ``cache_key`` / ``is_deterministic`` / ``CacheControl``: what the response cache keys on and
  when it may answer (latlab.gateway.cachekey);
- ``trim_messages`` / ``trim_prompt`` / ``trim_token_ids``: prompts cut to a token budget,
  keeping the system message and the newest turns (latlab.gateway.trim);
- ``prefix_key`` / ``group_by_prefix`` / ``prompt_text``: which requests share a prefix, for
  prefix-aware routing and grouping (latlab.gateway.grouping).

The service itself (``Gateway``, ``GatewayConfig``, ``serve``) needs the ``gateway`` extra
(uvicorn, redis, prometheus-client) and never torch; it is imported lazily.
"""

from __future__ import annotations

from typing import Any

from latlab.gateway.cachekey import CacheControl, cache_key, is_deterministic
from latlab.gateway.grouping import group_by_prefix, prefix_key, prompt_text
from latlab.gateway.trim import (
    EstimatedCounter,
    TokenizerCounter,
    load_counter,
    trim_messages,
    trim_prompt,
    trim_token_ids,
)

__all__ = [
    "CacheControl",
    "EstimatedCounter",
    "Gateway",
    "GatewayConfig",
    "TokenizerCounter",
    "cache_key",
    "group_by_prefix",
    "is_deterministic",
    "load_counter",
    "prefix_key",
    "prompt_text",
    "serve",
    "trim_messages",
    "trim_prompt",
    "trim_token_ids",
]


def __getattr__(name: str) -> Any:
    if name == "Gateway":
        from latlab.gateway.app import Gateway

        return Gateway
    if name == "GatewayConfig":
        from latlab.gateway.config import GatewayConfig

        return GatewayConfig
    if name == "serve":
        from latlab.gateway.server import serve

        return serve
    raise AttributeError(f"module 'latlab.gateway' has no attribute {name!r}")
