"""Lazy package exports: a name's module is imported the first time the name is used.

``import latlab`` must stay cheap and torch-free, and a package's ``__init__`` must not drag
its heaviest module into every import of a light one (``latlab.engine.config`` for the CLI,
``latlab.bench.config`` for the bench's help text). Each package maps its public names to
the modules defining them and takes ``__getattr__``/``__dir__`` from here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose ``exports`` map name -> module."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
