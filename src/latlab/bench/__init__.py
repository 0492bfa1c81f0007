"""The benchmark client: targets, load runner, results (imports without torch)."""

from latlab.bench.api import BenchConfig, arun_bench, run_bench
from latlab.bench.results import BenchResult
from latlab.bench.runner import LevelResult
from latlab.bench.targets import (
    CallableTarget,
    EngineTarget,
    GenOptions,
    OpenAITarget,
    TransformersTarget,
)

__all__ = [
    "BenchConfig",
    "BenchResult",
    "CallableTarget",
    "EngineTarget",
    "GenOptions",
    "LevelResult",
    "OpenAITarget",
    "TransformersTarget",
    "arun_bench",
    "run_bench",
]
