"""Test helpers that ship with latlab: a deterministic OpenAI-compatible stub server.

Exports resolve lazily so ``python -m latlab.testing.stub_server`` runs the module once.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAULTS", "StubConfig", "StubServer", "stub_process"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from latlab.testing import stub_server

        return getattr(stub_server, name)
    raise AttributeError(f"module 'latlab.testing' has no attribute {name!r}")
