"""Built kernel modules other than this tree's, loaded by path, for side-by-side benchmarks.

A kernel change is judged against the build before it in one process, rounds interleaved: the
machine's own drift between processes (2x on a shared VM, docs/engine.md) is larger than most
changes. ``python -m latlab.engine.kernels`` keeps each build under ``$TORCH_EXTENSIONS_DIR``,
one folder per source hash, so an older checkout's module stays loadable beside the current one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_module(entry: str) -> ModuleType:
    """The built module (``.so``) at ``entry``; exits with a message when it is not one."""
    path = Path(entry)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise SystemExit(f"{entry}: not a built kernel module (.so)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
