"""A decode batch that repeats itself: the same sequences, one new token each, step after step.

Building a batch-64 decode step's inputs read every sequence's last token, position and block
table in Python: ~0.3 ms of a 17-19 ms W8A8 step, most of it cache misses, since the forward
pass between two steps streams ~100 MB of weights through the caches (the same code ran in 0.11
ms when run twice in a row, and one torch op with the caches flushed took 15-90 us). But when a
step runs the sequences of the step before, in the same order, each with one new token and no
draft, its inputs are known without reading them: each input token is the one sampled last
step, each position is one past the last, and a block table changes only in a row whose
sequence crosses into a new block, which its position says. vLLM V1 keeps its decode inputs
from step to step for the same reason (its "persistent batch").

A record serves one step: ``take`` uses it up whether it matches or not, and only a step that
ran to its sampled tokens arms the next one (``record``). So anything between two steps
(preemption, an abort, an admission, a draft, a step that failed) sends the next step down the
ordinary path, which reads the sequences.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch

from latlab.engine.block_tables import BlockTables
from latlab.engine.sequence import Sequence

# (ends, offset, tables, width, block_size) -> positions, slots, seq_lens, block tables
DecodeInputs = Callable[[torch.Tensor, int, torch.Tensor, int, int], list[torch.Tensor]]


def decode_inputs_torch(
    ends: torch.Tensor, offset: int, tables: torch.Tensor, width: int, block_size: int
) -> list[torch.Tensor]:
    """step_ops.cpp's ``decode_inputs`` in torch ops (no kernels built; tests compare them)."""
    positions = ends + offset
    blocks = tables[: len(ends), :width]
    column = (positions // block_size).unsqueeze(1)
    slots = blocks.gather(1, column).squeeze(1) * block_size + positions % block_size
    return [positions, slots, positions + 1, blocks.clone()]


@dataclass(frozen=True, slots=True, kw_only=True)
class SteadyInputs:
    """A repeated decode step's inputs: [batch] int64 each, but the block tables."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    seq_lens: torch.Tensor  # positions + 1: the keys each row attends to
    block_tables: torch.Tensor  # [batch, max_blocks], as BlockTables.build gives it
    greedy_only: bool  # every row takes its argmax, with no logprobs to record


@dataclass(slots=True, kw_only=True)
class _Run:
    """Steps of the same sequences since the last ordinary step, which recorded ``ends``."""

    seqs: list[Sequence]
    ends: torch.Tensor  # int64 [batch]: each sequence's tokens with K/V after that step
    end_list: list[int]
    max_end: int
    rows_at: dict[int, list[int]]  # end % block_size -> the rows with that remainder
    greedy_only: bool
    offset: int = 0  # steps repeated since
    tokens: torch.Tensor | None = None  # the tokens the last step sampled: the next inputs


class SteadyBatch:
    """The last step's sequences and sampled tokens, while they can feed the next step."""

    def __init__(
        self, *, block_size: int, tables: BlockTables, decode_inputs: DecodeInputs | None
    ) -> None:
        self._block_size = block_size
        self._tables = tables
        self._decode_inputs = decode_inputs or decode_inputs_torch
        self._run: _Run | None = None  # armed: the next step may repeat it
        self._pending: _Run | None = None  # this step's, armed by its sampled tokens

    def expect(self, *, seqs: list[Sequence], ends: list[int], greedy_only: bool) -> None:
        """An ordinary step in which each of ``seqs`` samples one token, its K/V then reaching
        ``ends``: the next step may repeat it once ``record`` has its tokens. ``greedy_only``:
        the steps that repeat it need no more of their logits than each row's argmax."""
        rows_at: dict[int, list[int]] = {}
        for row, end in enumerate(ends):
            rows_at.setdefault(end % self._block_size, []).append(row)
        self._pending = _Run(
            seqs=list(seqs), ends=torch.tensor(ends, dtype=torch.long), end_list=ends,
            max_end=max(ends), rows_at=rows_at, greedy_only=greedy_only,
        )  # fmt: skip

    def record(self, tokens: torch.Tensor) -> None:
        """The tokens this step sampled ([batch] int64), one per sequence: arms the next step."""
        if self._pending is not None:
            self._pending.tokens = tokens
            self._run, self._pending = self._pending, None

    def take(self, seqs: list[Sequence], num_new_tokens: list[int]) -> SteadyInputs | None:
        """This step's inputs when it repeats the armed step; None for the ordinary path."""
        run, self._run, self._pending = self._run, None, None
        if run is None or len(run.seqs) != len(seqs) or max(num_new_tokens) != 1:
            return None
        if not all(map(operator.is_, run.seqs, seqs)):  # the same objects in the same order
            return None
        bs, offset = self._block_size, run.offset
        for row in run.rows_at.get(-offset % bs, ()):  # their new token starts a block
            needed = (run.end_list[row] + offset) // bs + 1
            self._tables.extend_row(row, needed, seqs[row].block_table)
        width = (run.max_end + offset) // bs + 1
        positions, slots, seq_lens, tables = self._decode_inputs(
            run.ends, offset, self._tables.tensor, width, bs
        )
        tokens = run.tokens
        run.offset, run.tokens, self._pending = offset + 1, None, run
        return SteadyInputs(
            input_ids=tokens, positions=positions, slots=slots, seq_lens=seq_lens,
            block_tables=tables, greedy_only=run.greedy_only,
        )  # fmt: skip
