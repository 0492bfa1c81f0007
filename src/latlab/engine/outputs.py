"""What the engine hands back: per-request outputs and engine-wide stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from latlab.engine.sequence import RequestMetrics


@dataclass(slots=True, frozen=True)
class Logprob:
    """A token's log-probability under the model and its rank (1 = the most likely)."""

    logprob: float
    rank: int


# One position: token id -> Logprob, the actual token first, then the top alternatives.
PositionLogprobs = dict[int, Logprob]


@dataclass(slots=True)
class RequestOutput:
    """One request's progress: cumulative text/token_ids plus the delta since the last one.

    The engine hands ``token_ids``, ``logprobs`` and ``prompt_logprobs`` over as ``Snapshot``s,
    sliced on first read: each reads as it was at its step, a list of its own, as if copied.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    new_text: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None
    num_cached_tokens: int
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    # With SamplingParams.logprobs: one entry per generated token (all of them so far).
    logprobs: list[PositionLogprobs] | None = None
    # With SamplingParams.prompt_logprobs: one per prompt token, None for the first.
    prompt_logprobs: list[PositionLogprobs | None] | None = None


class Snapshot(tuple):
    """``(source, start, end)``: a cumulative field's value ``source[start:end]``, sliced only
    when a reader asks (a tuple: built in C, no Python call per output).

    Each streaming step's ``RequestOutput`` holds the whole output so far. Copying the ids
    every step cost O(length) per sequence: 451 us a step at batch 64 after 1,000 tokens,
    where a stream's reader mostly looks at the delta alone. ``source`` must only ever grow at
    its end (the engine's token and logprob lists), so the slice taken later equals the one
    taken at the step; once taken it is kept, a list of the reader's own as before.
    """

    __slots__ = ()


def _lazy_field(name: str) -> None:
    """Make ``RequestOutput.<name>`` slice a ``Snapshot`` on first read; any other value (a
    list given to the constructor, or assigned) reads back as it was stored."""
    slot = getattr(RequestOutput, name)  # the slot's own descriptor: stores the value

    def read(self: RequestOutput) -> Any:
        value = slot.__get__(self, RequestOutput)
        if type(value) is Snapshot:
            source, start, end = value
            value = source[start:end]
            slot.__set__(self, value)
        return value

    # Stores are the slot's own (C, no Python frame): the constructor goes through them.
    lazy = property(read, slot.__set__, slot.__delete__, doc=f"{name} (cumulative)")
    setattr(RequestOutput, name, lazy)


for _name in ("token_ids", "logprobs", "prompt_logprobs"):
    _lazy_field(_name)


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_kv_blocks: int
    num_free_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions: int = 0
    spec_draft_tokens_total: int = 0  # prompt-lookup draft tokens proposed
    spec_accepted_tokens_total: int = 0  # of those, accepted (acceptance = accepted / draft)
    # Where a step's time goes: the model's forward pass vs everything around it (scheduling,
    # input tensors, sampling, detokenisation, outputs: the CPU-side overhead).
    steps_total: int = 0
    step_seconds_total: float = 0.0
    forward_seconds_total: float = 0.0
    # The KV cache as allocated (whole blocks): bytes held and tokens it can hold. 0 = unknown.
    kv_cache_bytes: int = 0
    kv_cache_tokens: int = 0
