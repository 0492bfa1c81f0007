"""What the engine hands back: per-request outputs and engine-wide stats."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """One request's progress: cumulative text/token_ids plus the delta since the last one."""

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
