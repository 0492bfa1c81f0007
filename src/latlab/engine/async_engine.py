"""AsyncLLM: the engine's step loop on a background thread, streams as async iterators.

Requests and aborts reach the loop thread through a command queue and are applied between
steps; outputs come back to each caller's asyncio queue with one
``loop.call_soon_threadsafe`` per step and event loop. Engine state (scheduler, block
manager, sequences and their detokenizers) is touched by the loop thread only, so it needs no
lock. The tokenizer is shared: the loop thread encodes text prompts and decodes outputs,
while a server encodes and renders chat templates on its own threads (the event loop and
``latlab serve``'s preparation worker). That is safe because every user only reads it
(``encode``, ``decode``, ``apply_chat_template``); nobody may change its settings (truncation,
padding, special tokens) while the engine runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from latlab.engine.config import EngineConfig
from latlab.engine.llm_engine import LLMEngine
from latlab.engine.outputs import EngineStats, RequestOutput
from latlab.engine.sampling_params import SamplingParams
from latlab.errors import ConfigError, LatlabError, OverloadedError


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncLLM:
    """Serve many concurrent requests from one engine; see ``generate``."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.engine = LLMEngine(config or EngineConfig())
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()  # guards _streams and _pending_adds
        self._pending_adds = 0
        self._ids = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="latlab-engine", daemon=True)
        self._thread.start()

    # ---- public surface ------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def config(self) -> EngineConfig:
        return self.engine.config

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def summary(self) -> str:
        return self.engine.summary()

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Incremental outputs of one request; the last has ``finished=True``.

        Raises OverloadedError (queue full), CapacityError (can never fit) or ConfigError
        (bad input) on the first iteration. Leaving the loop early aborts the request and
        frees its KV blocks.
        """
        if self._stopped:
            raise LatlabError("the engine has been shut down")
        if params is not None and not isinstance(params, SamplingParams):
            raise ConfigError("params must be a latlab SamplingParams")
        rid = request_id if request_id is not None else f"async-{next(self._ids)}"
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._register(rid, stream)
        self._commands.put(("add", rid, prompt, params))
        self._wake.set()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            with self._lock:
                self._streams.pop(rid, None)
            if not finished:
                self._commands.put(("abort", rid))
                self._wake.set()

    def _register(self, rid: str, stream: _Stream) -> None:
        max_waiting = self.engine.config.max_waiting
        with self._lock:
            if rid in self._streams:
                raise ConfigError(f"request id {rid!r} is already in use")
            if len(self.engine.scheduler.waiting) + self._pending_adds >= max_waiting:
                raise OverloadedError(
                    f"the waiting queue is full ({max_waiting} requests); retry later"
                )
            self._streams[rid] = stream
            self._pending_adds += 1

    async def shutdown(self) -> None:
        """Stop the step loop; unfinished streams end with a LatlabError."""
        self._stopped = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join)

    async def __aenter__(self) -> AsyncLLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # ---- the loop thread -----------------------------------------------------------------
    def _run(self) -> None:
        delay = self.engine.config.debug_step_delay_s
        while not self._stopped:
            self._apply_commands()
            if not self.engine.has_unfinished():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            if delay:
                time.sleep(delay)
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a failed step must not hang every caller
                self._fail_all(LatlabError(f"engine step failed: {exc!r}"))
                continue
            self._deliver(outputs)
        self._fail_all(LatlabError("the engine was shut down"))

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                self._add(*command[1:])
            else:
                self.engine.abort(command[1])

    def _add(self, rid: str, prompt: str | list[int], params: SamplingParams | None) -> None:
        error: Exception | None = None
        try:
            seq = self.engine.make_sequence(prompt, params, rid)
        except Exception as exc:  # delivered to the caller, whatever it is
            error = exc
        with self._lock:
            self._pending_adds -= 1
            stream = self._streams.get(rid)
        if stream is None:  # the caller already left
            return
        if error is None:
            try:
                self.engine.add_sequence(seq, check_queue=False)
            except Exception as exc:
                error = exc
        if error is not None:
            self._send([(stream, error)])

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        with self._lock:
            pairs = [(self._streams.get(o.request_id), o) for o in outputs]
        self._send([(s, o) for s, o in pairs if s is not None])

    def _send(self, pairs: list[tuple[_Stream, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        for stream, item in pairs:
            by_loop.setdefault(stream.loop, []).append((stream.queue, item))
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                loop.call_soon_threadsafe(_put_all, batch)

    def _fail_all(self, error: LatlabError) -> None:
        with self._lock:
            streams = list(self._streams.items())
        for rid, _ in streams:
            self.engine.abort(rid)
        self._send([(s, error) for _, s in streams])


def _put_all(batch: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in batch:
        q.put_nowait(item)
