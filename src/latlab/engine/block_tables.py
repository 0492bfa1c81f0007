"""A step's block tables as one tensor, kept between steps and written only where they changed.

The attention reads every running sequence's block ids as a [batch, max_blocks] int64 tensor,
each row zero-padded past the blocks its tokens need. Building it from Python lists every step
cost O(the batch's blocks): 64 sequences after 1,000 tokens are 4,000 Python ints to read
and convert, and building the attention metadata took 445 us a step there against 159 us after
128 tokens (batch 64). A
sequence's block table only grows at its end (``BlockManager.allocate_slots`` extends it) or
is replaced by a new list (``free``), so a row that holds the same sequence's list as last
step needs only its new blocks written: about one a sequence every ``block_size`` steps.
"""

from __future__ import annotations

import numpy as np
import torch


class BlockTables:
    """Rows of block ids, one per batch position, kept from step to step."""

    def __init__(self, rows: int = 1, cols: int = 1) -> None:
        self._array = np.zeros((rows, cols), dtype=np.int64)
        self._sources: list[list[int] | None] = [None] * rows  # the list a row was copied from
        self._lengths = [0] * rows  # entries copied into each row; past them it is all 0
        self._tensor = torch.from_numpy(self._array)

    def build(self, tables: list[list[int]], needed: list[int]) -> torch.Tensor:
        """[len(tables), max(needed)] int64 (a new tensor): row i is ``tables[i][:needed[i]]``
        then zeros, as ``torch.tensor`` of the padded lists would give it."""
        self._fit(len(tables), max(needed))
        array, sources, lengths = self._array, self._sources, self._lengths
        for row, (table, n) in enumerate(zip(tables, needed, strict=True)):
            have = lengths[row]
            if sources[row] is table:
                if n > have:
                    array[row, have:n] = table[have:n]
            else:  # another sequence, or this one's blocks were freed and allocated again
                array[row, :n] = table[:n]
                sources[row] = table
            if have > n:
                array[row, n:have] = 0
            lengths[row] = n
        return torch.from_numpy(array[: len(tables), : max(needed)].copy())

    @property
    def tensor(self) -> torch.Tensor:
        """The whole kept array as a tensor sharing its memory (rows past the batch, columns
        past each row's blocks included): what ``decode_inputs`` cuts a step's tables from."""
        return self._tensor

    def extend_row(self, row: int, needed: int, table: list[int]) -> None:
        """Row ``row`` of the last batch now needs ``needed`` blocks of ``table``, its sequence's
        list (the same list as before: a repeated decode step, steady_batch.py)."""
        self._fit(row + 1, needed)
        have = self._lengths[row]
        self._array[row, have:needed] = table[have:needed]
        self._lengths[row] = needed

    def _fit(self, rows: int, cols: int) -> None:
        """Grow the array (copying what it holds) to at least ``rows`` x ``cols``."""
        have_rows, have_cols = self._array.shape
        if rows <= have_rows and cols <= have_cols:
            return
        cols = have_cols if cols <= have_cols else max(cols, 2 * have_cols)
        grown = np.zeros((max(rows, have_rows), cols), dtype=np.int64)
        grown[:have_rows, :have_cols] = self._array
        self._array = grown
        self._tensor = torch.from_numpy(grown)
        self._sources += [None] * (grown.shape[0] - have_rows)
        self._lengths += [0] * (grown.shape[0] - have_rows)
