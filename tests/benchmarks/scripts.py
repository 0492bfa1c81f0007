"""Import a benchmark script (benchmarks/ is not a package) as a module for its tests."""

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
