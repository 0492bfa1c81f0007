"""Sequence: one request's state as it moves waiting -> running -> finished."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from latlab.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class RequestMetrics:
    """perf_counter_ns timestamps of a request's life (0 = not reached yet)."""

    arrival_ns: int = 0
    first_scheduled_ns: int = 0
    first_token_ns: int = 0
    finished_ns: int = 0


@dataclass(slots=True)
class Sequence:
    """All tokens (prompt + generated), how many have KV in the cache, and the block table.

    ``num_computed_tokens`` is the number of leading tokens whose K/V are in cached blocks;
    the scheduler runs ``token_ids[num_computed_tokens:]`` (in chunks), so prefill, decode
    and recompute after preemption are one code path.
    """

    request_id: str
    prompt: str | None
    token_ids: list[int]
    params: SamplingParams
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_registered_blocks: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    generator: Any = None  # torch.Generator when params.seed is set
    detok: Any = None  # IncrementalDetokenizer
    num_preemptions: int = 0
    draft_token_ids: list[int] = field(default_factory=list)  # this step's speculative draft
    draft_misses: int = 0  # drafts in a row with no token accepted
    draft_cooldown: int = 0  # decode steps left before the next draft may be proposed
    logits_state: Any = None  # latlab.engine.logits_processors.LogitsState, built on first use
    logprobs: list[Any] = field(default_factory=list)  # per generated token (if requested)
    prompt_logprobs: list[Any] = field(default_factory=list)  # per prompt token (if requested)
    step_logprobs: list[Any] = field(default_factory=list)  # this step's, until accepted
    # Only the finished output is wanted (LLM.generate, as vLLM's RequestOutputKind.FINAL_ONLY):
    # the engine builds no RequestOutput for this sequence's other steps.
    final_output_only: bool = False
    # The prompt's ids, copied once: every step's RequestOutput shares this list (not to be
    # modified) where a slice per step per sequence cost O(prompt) each time.
    prompt_token_ids: list[int] = field(default_factory=list, init=False)
    # What every generated token is checked against, worked out once (the engine adds its EOS
    # ids and its max_model_len): the tokens that stop it, and the length that ends it.
    stop_ids: frozenset[int] = field(default=frozenset(), init=False)
    length_limit: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)
        self.prompt_token_ids = list(self.token_ids)
        self.stop_ids = self.params.stop_token_set
        self.length_limit = self.num_prompt_tokens + self.params.max_tokens
        if not self.metrics.arrival_ns:
            self.metrics.arrival_ns = time.perf_counter_ns()

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_decoding(self) -> bool:
        """Fully prefilled: only the newest token lacks K/V (a decode step, or a draft check)."""
        return self.num_tokens - self.num_computed_tokens == 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def max_total_tokens(self) -> int:
        """Tokens this request may ever hold in the KV cache (prompt + max_tokens - 1)."""
        return self.num_prompt_tokens + self.params.max_tokens - 1
