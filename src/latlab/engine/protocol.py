"""The engine contract: what ``latlab serve`` and the in-process bench target hold an engine to.

``latlab.engine.AsyncLLM`` is the one implementation; a test fake is another. A new engine (a
quantized runner, another model family's loop) is one class with these members, and a type
checker checks it against this Protocol. Imports no torch.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol, runtime_checkable

from latlab.engine.outputs import EngineStats, RequestOutput


@runtime_checkable
class Engine(Protocol):
    """An engine serving many concurrent requests, each as a stream of outputs."""

    @property
    def model_name(self) -> str:
        """The model as the engine knows it (a directory name or the path given)."""

    @property
    def max_model_len(self) -> int:
        """Most tokens one sequence (prompt and output) may hold."""

    @property
    def tokenizer(self) -> Any:
        """A transformers-style tokenizer: ``encode``, ``decode``, ``convert_ids_to_tokens``,
        ``len()``, ``apply_chat_template`` (read-only: it is shared across threads)."""

    def stats(self) -> EngineStats:
        """Engine-wide counters and gauges, read at any time from any thread."""

    def generate(
        self, prompt: str | list[int], params: Any, request_id: str | None = None
    ) -> AsyncGenerator[RequestOutput, None]:
        """Incremental outputs of one request, the last with ``finished=True``.

        Refusals (OverloadedError, CapacityError, ConfigError) surface on the first
        iteration; leaving the iteration early (``aclose``) aborts the request.
        """

    async def shutdown(self) -> None:
        """Stop; unfinished streams end with a LatlabError."""
