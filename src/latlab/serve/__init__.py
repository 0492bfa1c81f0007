"""``latlab serve``: the engine behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

All web code lives in this package so ``latlab.engine`` stays importable without FastAPI.
``create_app`` is resolved lazily so importing a submodule does not pull the whole app.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from latlab.serve.app import create_app

        return create_app
    if name == "serve":
        from latlab.serve.server import serve

        return serve
    raise AttributeError(f"module 'latlab.serve' has no attribute {name!r}")
