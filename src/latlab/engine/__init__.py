"""latlab's inference engine: paged KV cache, continuous batching, prefix caching.

Imports torch but never fastapi; the server wraps ``AsyncLLM``.
"""

from latlab.engine.async_engine import AsyncLLM
from latlab.engine.config import EngineConfig
from latlab.engine.llm import LLM
from latlab.engine.llm_engine import LLMEngine
from latlab.engine.outputs import EngineStats, RequestOutput
from latlab.engine.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "AsyncLLM",
    "EngineConfig",
    "EngineStats",
    "LLMEngine",
    "RequestOutput",
    "SamplingParams",
]
