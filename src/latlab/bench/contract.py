"""The bench contracts: what the runner drives (a ``Target``) and what it reports to.

A target is one file: subclass ``BaseTarget`` (every member but ``run`` has a default), or
write any class with all of ``Target``'s members; a type checker checks either against the
Protocol. The runner and ``run_bench`` use these members and nothing else, so a new target
(an HTTP server latlab launched, a gateway) needs no edit anywhere in the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from latlab.metrics import RequestRecord
from latlab.workload import BenchRequest

# Work that completes a record after the stream ended (parsing, token counting); the runner
# calls it when the client is not busy timestamping other streams.
Finisher = Callable[[], None]


class GenOptions:
    """Generation settings shared by every request of a run."""

    __slots__ = ("ignore_eos", "min_tokens", "stream", "temperature")

    def __init__(
        self,
        *,
        ignore_eos: bool = True,
        temperature: float = 0.0,
        stream: bool = True,
        min_tokens: int | None = None,
    ) -> None:
        self.ignore_eos = ignore_eos
        self.temperature = temperature
        self.stream = stream
        self.min_tokens = min_tokens


@dataclass(kw_only=True, frozen=True, slots=True)
class TargetSpec:
    """How a client worker process rebuilds a target: an importable class and its arguments."""

    kind: type
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Target:
        return self.kind(**self.kwargs)


@runtime_checkable
class Target(Protocol):
    """The runner's view of what it measures."""

    name: str  # shown in the table and recorded in the result JSON
    remote: bool  # runs elsewhere: the client's CPU use is then pure overhead
    stamps_in_loop: bool  # timestamps are taken on the event loop (False: in its own threads)
    tokenizer: Any | None  # for exact prompt lengths; None when unknown
    settings: Mapping[str, Any]  # what an in-process engine was built with (in the JSON)

    async def check(self) -> None:
        """Fail fast (TargetError) before any load is sent."""

    async def prepare(self, users: int) -> None:
        """Before a closed-loop level of ``users``: open connections, warm pools."""

    async def run(self, req: BenchRequest, rec: RequestRecord, opts: GenOptions) -> Finisher | None:
        """Send one request and fill ``rec``; record failures in ``rec.error``, never raise.

        ``rec.send_ns`` right before the request leaves, one ``chunk_ns`` per content-carrying
        chunk, ``end_ns`` at the last byte. May return a ``Finisher``.
        """

    def spec(self) -> TargetSpec | None:
        """How a worker process rebuilds this target; None when it cannot be sharded."""

    async def aclose(self) -> None:
        """Release connections, threads or an engine the target owns."""


class BaseTarget:
    """Defaults for every ``Target`` member except ``run``: an in-process target."""

    name: str = "target"
    remote: bool = False
    stamps_in_loop: bool = True
    tokenizer: Any | None = None
    settings: Mapping[str, Any] = MappingProxyType({})

    async def check(self) -> None:
        return None

    async def prepare(self, users: int) -> None:
        return None

    async def run(self, req: BenchRequest, rec: RequestRecord, opts: GenOptions) -> Finisher | None:
        raise NotImplementedError

    def spec(self) -> TargetSpec | None:
        return None

    async def aclose(self) -> None:
        return None


class Progress(Protocol):
    """Where the runner reports a level's progress (a live bar, a worker's pipe, nothing)."""

    def start_level(self, label: str, total: int | None) -> None: ...
    def update(self, completed: int, failed: int, ttft_p50_ms: float | None) -> None: ...
    def end_level(self) -> None: ...
