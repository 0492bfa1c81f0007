"""Import a benchmark script (benchmarks/ is not a package) as a module for its tests; the dtype
whose native batch decode step this machine runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str, path: Path | None = None) -> ModuleType:
    """``benchmarks/<name>.py`` (or ``path``) imported under ``name``, registered in sys.modules
    so dataclasses and pickling inside it resolve their module."""
    spec = importlib.util.spec_from_file_location(name, path or BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def batch_step_dtype() -> str:
    """bfloat16 where the native batch decode step runs on AMX tiles, float32 where it runs on
    the AVX2 FMA panels; a skip where neither is built."""
    import pytest

    from latlab.engine.kernels import batch_decode_model, f32_batch_decode_model

    if batch_decode_model(wait=True).fn is not None:
        return "bfloat16"
    if f32_batch_decode_model(wait=True).fn is not None:
        return "float32"
    pytest.skip("no native batch decode step here (needs the kernels, and AMX or AVX2 FMA)")
