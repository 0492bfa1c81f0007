"""Per-request logit adjustments before picking a token: bias, penalties, min_tokens.

Semantics follow vLLM (so outputs match a vLLM server given the same request): ``logit_bias``
is added first; then ``repetition_penalty`` divides positive and multiplies negative logits of
tokens seen in the prompt or the output; then ``frequency_penalty`` x count and
``presence_penalty`` x (count > 0) over the output are subtracted; last, ``min_tokens`` masks
EOS and stop tokens.

Cheap when unused (one attribute check per row) and cheap when used: what a request needs is
built once into its ``LogitsState`` (index tensors, the prompt's token mask) and the output
counts are updated with each step's new tokens only, so a step's cost does not grow with the
stop list or the output length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latlab.engine.sequence import Sequence


@dataclass(slots=True)
class LogitsState:
    """What one sequence's adjustments need, kept across steps."""

    banned_early: torch.Tensor | None = None  # EOS + stop ids, masked before min_tokens
    bias_ids: torch.Tensor | None = None
    bias_values: torch.Tensor | None = None
    seen: torch.Tensor | None = None  # bool [vocab]: in the prompt or the output
    counts: torch.Tensor | None = None  # float32 [vocab]: occurrences in the output
    counted: int = 0  # output tokens already in ``counts``


def adjust_logits(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """Apply every row's bias, penalties and min_tokens mask to ``logits`` in place."""
    for row, seq in enumerate(seqs):
        params = seq.params
        early = params.min_tokens and seq.num_output_tokens < params.min_tokens
        if not (early or params.adjusts_logits):
            continue
        state = _state_of(seq, logits)
        if state.bias_ids is not None:
            logits[row].index_add_(0, state.bias_ids, state.bias_values.to(logits.dtype))
        if params.has_penalties:
            _penalize(logits[row], seq, state)
        if early and state.banned_early is not None:
            logits[row, state.banned_early] = float("-inf")


def _state_of(seq: Sequence, logits: torch.Tensor) -> LogitsState:
    if seq.logits_state is None:
        seq.logits_state = _build_state(seq, logits.shape[1], logits.device)
    return seq.logits_state


def _build_state(seq: Sequence, vocab: int, device: torch.device) -> LogitsState:
    params = seq.params
    state = LogitsState()
    if params.min_tokens:  # the tokens that would stop it (EOS too unless ignored) wait
        ids = sorted(t for t in seq.stop_ids if t < vocab)
        if ids:
            state.banned_early = torch.tensor(ids, dtype=torch.long, device=device)
    if params.logit_bias:
        items = [(t, b) for t, b in params.logit_bias.items() if t < vocab]
        state.bias_ids = torch.tensor([t for t, _ in items], dtype=torch.long, device=device)
        state.bias_values = torch.tensor([b for _, b in items], device=device)
    if params.has_penalties:
        prompt = torch.tensor(seq.token_ids[: seq.num_prompt_tokens], dtype=torch.long)
        state.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        state.seen[prompt.to(device)] = True
        state.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
    return state


def _penalize(row: torch.Tensor, seq: Sequence, state: LogitsState) -> None:
    params = seq.params
    new = seq.token_ids[seq.num_prompt_tokens + state.counted :]
    if new:
        ids = torch.tensor(new, dtype=torch.long, device=row.device)
        state.counts.index_add_(0, ids, torch.ones(len(new), device=row.device))
        state.seen[ids] = True
        state.counted += len(new)
    if params.repetition_penalty != 1.0:
        penalty = params.repetition_penalty
        scaled = torch.where(row > 0, row / penalty, row * penalty)
        row.copy_(torch.where(state.seen, scaled, row))
    if params.frequency_penalty:
        row.sub_((params.frequency_penalty * state.counts).to(row.dtype))
    if params.presence_penalty:
        row.sub_((params.presence_penalty * (state.counts > 0)).to(row.dtype))
