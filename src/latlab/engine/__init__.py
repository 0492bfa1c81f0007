"""latlab's inference engine: paged KV cache, continuous batching, prefix caching.

Imports torch but never fastapi; the server wraps ``AsyncLLM``. Exports resolve lazily, so
``latlab.engine.config`` (read by the CLI to build ``latlab serve``'s flags) loads without torch.
"""

from __future__ import annotations

from latlab.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
