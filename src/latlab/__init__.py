"""latlab: measure LLM inference latency truthfully, and cut it without hurting quality.

The public API is re-exported here lazily: ``import latlab`` must stay cheap and must not
import torch, so the bench client works on machines without it.
"""

from __future__ import annotations

from latlab.lazy import lazy_exports

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access.
_LAZY_EXPORTS: dict[str, str] = {
    "LatlabError": "latlab.errors",
    "measure": "latlab.metrics",
    "summarize": "latlab.metrics",
    "RequestRecord": "latlab.metrics",
    "Summary": "latlab.metrics",
    "SLO": "latlab.metrics",
    "LLM": "latlab.engine.llm",
    "SamplingParams": "latlab.engine.sampling_params",
    "plan_memory": "latlab.plan",
    "bundled_model_path": "latlab.assets",
}

__all__ = ["__version__", *_LAZY_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY_EXPORTS)
