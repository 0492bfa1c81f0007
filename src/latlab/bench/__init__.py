"""The benchmark client: targets, load runner, results (imports without torch).

The contracts a new target implements are in ``latlab.bench.contract``.
"""

from latlab.bench.api import BenchConfig, arun_bench, run_bench
from latlab.bench.contract import BaseTarget, GenOptions, Target, TargetSpec
from latlab.bench.local_targets import CallableTarget, EngineTarget, TransformersTarget
from latlab.bench.results import BenchResult
from latlab.bench.runner import LevelResult
from latlab.bench.targets import OpenAITarget

__all__ = [
    "BaseTarget",
    "BenchConfig",
    "BenchResult",
    "CallableTarget",
    "EngineTarget",
    "GenOptions",
    "LevelResult",
    "OpenAITarget",
    "Target",
    "TargetSpec",
    "TransformersTarget",
    "arun_bench",
    "run_bench",
]
