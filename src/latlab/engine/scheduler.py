"""Continuous batching: each step picks which sequences run and how many tokens each gets.

Running sequences go first (decode, or the next chunk of a long prompt), then waiting ones
join in FCFS order while the token budget, ``max_num_seqs`` and free KV blocks allow. When a
running sequence cannot get a block, the newest running sequence is preempted: its blocks are
freed and it is recomputed later (its cached prefix blocks usually make that cheap).

With speculative decoding on, a decoding sequence may also get a draft: its step then runs
1 + len(draft) tokens, and the engine keeps only the K/V of the draft tokens it accepts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from latlab.engine.block_manager import BlockManager
from latlab.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class SchedulerOutput:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.seqs


# (sequence, most draft tokens that fit) -> the draft, [] for none
DraftProposer = Callable[[Sequence, int], list[int]]


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        propose_draft: DraftProposer | None = None,
    ):
        self.block_manager = block_manager
        self.propose_draft = propose_draft
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions_total = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if out.num_preempted == 0:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            draft = self._draft(seq, budget, len(self.running) - i) if self.propose_draft else []
            if draft and self.block_manager.allocate_slots(seq, n + len(draft)):
                seq.draft_token_ids = draft
                n += len(draft)
            elif not self._allocate_or_preempt(seq, n, out):
                return budget
            out.seqs.append(seq)
            out.num_new_tokens.append(n)
            budget -= n
            i += 1
        return budget

    def _allocate_or_preempt(self, seq: Sequence, n: int, out: SchedulerOutput) -> bool:
        """Room for ``n`` tokens of ``seq``, preempting the newest; False if ``seq`` went."""
        while not self.block_manager.allocate_slots(seq, n):
            victim = self.running.pop()  # the newest running sequence
            self._preempt(victim)
            out.num_preempted += 1
            if victim is seq:
                return False
        return True

    def _draft(self, seq: Sequence, budget: int, num_left: int) -> list[int]:
        """A draft for a decoding ``seq`` within the token budget and max_tokens.

        A draft is only tried while more blocks are free than sequences are left to schedule,
        so speculation does not starve the decodes behind it into preemption.
        """
        if self.propose_draft is None or not seq.is_decoding:
            return []
        if self.block_manager.num_free_blocks <= num_left:
            return []
        limit = min(budget - 1, seq.params.max_tokens - seq.num_output_tokens - 1)
        return self.propose_draft(seq, limit) if limit > 0 else []

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            cached = bm.find_cached_prefix(seq)
            num_cached = len(cached) * bm.block_size
            n = min(seq.num_tokens - num_cached, budget)
            if not bm.allocate_slots(seq, n, cached):
                break  # FCFS: nobody overtakes the head of the queue
            self.waiting.popleft()
            bm.record_lookup(seq.num_tokens, num_cached)
            if seq.num_preemptions == 0:
                seq.num_cached_tokens = num_cached
            if not seq.metrics.first_scheduled_ns:
                seq.metrics.first_scheduled_ns = time.perf_counter_ns()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.seqs.append(seq)
            out.num_new_tokens.append(n)
            budget -= n

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.draft_token_ids = []
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark ``seq`` finished and release its blocks, wherever it is."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.metrics.finished_ns = time.perf_counter_ns()
