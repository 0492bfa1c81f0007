"""The event loop a benchmark runs on: uvloop when installed, else asyncio.

Both the parent (``run_bench``) and each client worker process start their loop here, so the
choice and its error message live in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from latlab.errors import ConfigError

T = TypeVar("T")
LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for plain asyncio.

    "auto" uses uvloop when it is installed (its C event loop costs the client a fraction of
    asyncio's CPU per streamed chunk), "uvloop" requires it, "asyncio" never uses it.
    """
    if loop not in LOOPS:
        raise ConfigError(f"loop must be auto, uvloop or asyncio, not {loop!r}")
    if loop == "asyncio" or not hasattr(asyncio, "Runner"):  # Runner: Python 3.11+
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise ConfigError("uvloop is not installed: pip install 'latlab[bench]'") from None
        return None
    return uvloop.new_event_loop


def run_on_loop(main: Callable[[], Coroutine[Any, Any, T]], loop: str = "auto") -> T:
    """Run ``main()`` to completion on a fresh event loop of the kind ``loop`` names.

    Takes a coroutine function, not a coroutine: a bad ``loop`` fails before any coroutine
    exists, so no "coroutine was never awaited" warning follows the error.
    """
    factory = loop_factory(loop)
    if factory is None:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
