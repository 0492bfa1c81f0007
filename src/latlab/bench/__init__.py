"""The benchmark client: targets, load runner, results (imports without torch).

The contracts a new target implements are in ``latlab.bench.contract``; a run's settings and
their defaults in ``latlab.bench.config``. Exports resolve lazily, so the CLI reads the
config's defaults without importing the HTTP client.
"""

from __future__ import annotations

from latlab.lazy import lazy_exports

_EXPORTS = {
    "BenchConfig": "latlab.bench.config",
    "arun_bench": "latlab.bench.api",
    "run_bench": "latlab.bench.api",
    "BaseTarget": "latlab.bench.contract",
    "GenOptions": "latlab.bench.contract",
    "Target": "latlab.bench.contract",
    "TargetSpec": "latlab.bench.contract",
    "CallableTarget": "latlab.bench.local_targets",
    "EngineTarget": "latlab.bench.local_targets",
    "TransformersTarget": "latlab.bench.local_targets",
    "BenchResult": "latlab.bench.results",
    "LevelResult": "latlab.bench.runner",
    "OpenAITarget": "latlab.bench.targets",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
