"""Writing a flight's new pieces to a client from inside the upstream's read callback.

A follower that has sent everything so far would otherwise wait on a future per piece: the
upstream read resolves it, the event loop schedules the follower's task, the task resumes three
coroutine frames, sends, and makes the next future. At 64 streams that is 6,400 task wake-ups a
second, and each piece waits one more loop turn before it leaves. Instead a caught-up follower
hands the flight a ``Relay``, and the flight calls ``Relay.push`` right after it appends a piece:
the piece goes out in the same callback that read it.

ASGI ``send`` is a coroutine, but a server's send only suspends when the socket's buffer is full
(flow control). ``push`` runs the coroutine one step (what Python 3.12's eager tasks do): when it
finishes at once, nothing was scheduled; when it suspends, the relay keeps the coroutine, leaves
the flight, and wakes its follower, whose task finishes the send and carries on piece by piece
until it has caught up again. A send that raises never reaches the flight's read callback (the
upstream connection serves every follower): the follower re-raises it in its own task.

``start_eagerly`` applies the same one-step idea to a new flight: its upstream request is
written in the step that accepted the client's, and a task finishes the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

Send = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


class Relay:
    """One follower's cursor while the flight writes to it directly."""

    __slots__ = ("_on_content", "error", "pending", "send", "sent", "wake")

    def __init__(self, send: Send, sent: int, on_content: Callable[[int], None]) -> None:
        self.send = send
        self.sent = sent  # pieces already written to this client
        self.wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: tuple[Coroutine[Any, Any, None], Any] | None = None  # a suspended send
        self.error: BaseException | None = None
        self._on_content = on_content  # called with the piece count after each write

    def push(self, pieces: list[bytes]) -> bool:
        """Write the pieces not yet sent; False when the relay must leave the flight."""
        n = len(pieces)
        data = pieces[self.sent] if n - self.sent == 1 else b"".join(pieces[self.sent : n])
        self.sent = n
        coro = self.send({"type": "http.response.body", "body": data, "more_body": True})
        try:
            yielded = coro.send(None)
        except StopIteration:
            self._on_content(n)
            return True
        except Exception as exc:  # the follower's task raises it, not the upstream's callback
            self.error = exc
            self.release()
            return False
        self._on_content(n)
        self.pending = (coro, yielded)
        self.release()
        return False

    def release(self) -> None:
        """Wake the follower's task (the flight ended, or this relay left it)."""
        if not self.wake.done():
            self.wake.set_result(None)

    async def settle(self, *, abandon: bool = False) -> None:
        """In the follower's task: finish a suspended send (or drop it when the client has
        gone: ``abandon``), or raise what a send raised."""
        if self.error is not None:
            raise self.error
        if self.pending is not None:
            coro, yielded = self.pending
            self.pending = None
            if abandon:
                coro.close()
            else:
                await resume(coro, yielded)


def start_eagerly(
    coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop | None = None
) -> asyncio.Task[None] | None:
    """Run ``coro`` up to its first real wait now, in the caller's step; a task finishes it.

    What Python 3.12's eager tasks do: the upstream request of a new flight is written in the
    step that accepted it, not one event-loop turn later behind every chunk read in between.
    None when it finished without waiting; its exceptions in the first step reach the caller.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    except BaseException:
        coro.close()
        raise
    return (loop or asyncio.get_running_loop()).create_task(resume(coro, yielded))


async def resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Run ``coro`` to its end from where one ``coro.send(None)`` left it (it yielded
    ``yielded``: the future it waits for, or None for a bare yield)."""
    try:
        while True:
            try:
                if yielded is None:
                    await asyncio.sleep(0)
                else:
                    # What a task does with a future its coroutine yields: take it as awaited
                    # (the flag the yield set), then wait for it.
                    yielded._asyncio_future_blocking = False
                    await yielded
            except BaseException as exc:  # passed into the coroutine, as a task would
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                yielded = coro.send(None)
            except StopIteration:
                return
    finally:
        coro.close()
