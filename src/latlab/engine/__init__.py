"""latlab's inference engine: paged KV cache, continuous batching, prefix caching.

Imports torch but never fastapi; the server wraps ``AsyncLLM``. Exports resolve lazily, so
``latlab.engine.config`` (read by the CLI to build ``latlab serve``'s flags) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LLM": "latlab.engine.llm",
    "AsyncLLM": "latlab.engine.async_engine",
    "EngineConfig": "latlab.engine.config",
    "EngineStats": "latlab.engine.outputs",
    "LLMEngine": "latlab.engine.llm_engine",
    "RequestOutput": "latlab.engine.outputs",
    "SamplingParams": "latlab.engine.sampling_params",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'latlab.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
