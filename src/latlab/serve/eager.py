"""Start a request's ASGI task in the read callback that parsed the request (eager start).

uvicorn creates one task per request while it parses the request head; the task's first step
runs one event-loop turn later, behind every other callback of that turn. A gateway process
forwarding 64 streams gets their chunks in bursts (every stream's next token at once), so a
request parsed during a burst waited for the rest of the burst before its handler ran: 2.4-3.9
ms on average at 64 streams on the measured 2-core machine (docs/gateway.md), 0.2 ms with this.

While a protocol parses one read, its ``loop`` is a :class:`HoldingLoop`: ``create_task``
makes the task (uvicorn tracks and cancels it as usual) but holds its first step; once the
read is parsed (a body that came with its head is there), :meth:`HoldingLoop.start_held` runs
each held first step at once, as the current task, the way Python 3.12's eager tasks do. The
task's own coroutine is a continuation that picks up where that step stopped.

Python 3.11 or newer (a task's context is given at creation); elsewhere tasks start as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine
from typing import Any

SUPPORTED = sys.version_info >= (3, 11) and hasattr(asyncio.tasks, "_enter_task")


class _FirstStep:
    """A held coroutine and what its first step did: ("yielded", future), ("done", None) or
    ("raised", exception); None until it ran."""

    __slots__ = ("coro", "outcome")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.outcome: tuple[str, Any] | None = None


class HoldingLoop:
    """An event loop whose ``create_task`` holds the task's first step until
    :meth:`start_held`; every other attribute is the real loop's."""

    __slots__ = ("_held", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list[tuple[_FirstStep, asyncio.Task[Any], contextvars.Context]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    def create_task(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        ctx = context if context is not None else contextvars.copy_context()
        step = _FirstStep(coro)
        task = self._loop.create_task(_Continuation(step), name=name, context=ctx)
        self._held.append((step, task, ctx))
        return task

    def start_held(self) -> None:
        """Run the first step of every task held so far, in the order they were made."""
        held, self._held = self._held, []
        for step, task, ctx in held:
            if not (task.done() or task.cancelling()):  # a cancelled one never starts
                _first_step(step, task, ctx, self._loop)


def _first_step(
    step: _FirstStep, task: asyncio.Task[Any], ctx: contextvars.Context, loop: Any
) -> None:
    # asyncio.timeout and current_task() must see the task; a task that is running the caller
    # (never a loop callback, but a test may feed a protocol from one) steps aside meanwhile.
    caller = asyncio.current_task(loop)
    if caller is not None:
        asyncio.tasks._leave_task(loop, caller)
    asyncio.tasks._enter_task(loop, task)
    try:
        step.outcome = ("yielded", ctx.run(step.coro.send, None))
    except StopIteration:
        step.outcome = ("done", None)
    except BaseException as exc:  # raised in the task, where uvicorn expects it
        step.outcome = ("raised", exc)
    finally:
        asyncio.tasks._leave_task(loop, task)
        if caller is not None:
            asyncio.tasks._enter_task(loop, caller)


class _Continuation(Coroutine[Any, Any, Any]):
    """The task's coroutine: the held coroutine itself, from where its first step stopped.

    The first ``send`` hands the task what the first step yielded (a future it waits for), or
    ends as that step ended; every later ``send`` and ``throw`` goes straight to the held
    coroutine, so a cancellation reaches it as it would in a plain task.
    """

    __slots__ = ("_started", "step")

    def __init__(self, step: _FirstStep) -> None:
        self.step = step
        self._started = False

    def send(self, value: Any) -> Any:
        step = self.step
        if self._started or step.outcome is None:  # a later step, or never started eagerly
            self._started = True
            return step.coro.send(value)
        self._started = True
        kind, result = step.outcome
        if kind == "raised":
            raise result
        if kind == "done":
            raise StopIteration(result)
        return result  # the future the first step waits for, or None (a bare yield)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:  # type: ignore[override]
        self._started = True
        if self.step.outcome is None:  # cancelled before it could start: it never runs
            self.step.coro.close()
        exc = typ if val is None else val
        if self.step.outcome is None or self.step.outcome[0] != "yielded":
            raise exc
        return self.step.coro.throw(exc)

    def close(self) -> None:
        self.step.coro.close()

    def __await__(self) -> Any:
        raise TypeError("a held task's coroutine is driven by its task only")
