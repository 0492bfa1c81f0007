"""Paged KV cache bookkeeping: fixed-size blocks, block tables, ref counts, prefix caching.

A block is free when no sequence references it. A free block may still hold a cached prefix
(its hash stays in ``_hash_to_block``) until it is handed out again: the free list is kept in
LRU order, so the least recently released cached blocks are evicted first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from latlab.engine.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


def chain_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    """Hash of a full block given its parent's hash: equal only for equal whole prefixes."""
    return hash((parent, token_ids))


class BlockManager:
    """Hands out KV blocks to sequences and shares full blocks of equal prefixes."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._hash_to_block: dict[int, int] = {}
        self.prefix_cache_queries = 0  # prompt tokens looked up
        self.prefix_cache_hits = 0  # of those, tokens served from the cache

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Share of blocks referenced by live sequences (cached-but-free blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def is_free(self, block_id: int) -> bool:
        return block_id in self._free

    def cached_block_ids(self) -> dict[int, int]:
        return dict(self._hash_to_block)

    # ---- prefix caching ------------------------------------------------------------------
    def _update_hashes(self, seq: Sequence) -> None:
        bs = self.block_size
        hashes = seq.block_hashes
        parent = hashes[-1] if hashes else None
        for i in range(len(hashes), seq.num_tokens // bs):
            parent = chain_hash(parent, tuple(seq.token_ids[i * bs : (i + 1) * bs]))
            hashes.append(parent)

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Block ids holding the longest cached prefix of ``seq`` (state is not changed).

        At least one token is always left to compute, since its logits pick the next token.
        A request that asks for prompt logprobs computes its whole prompt (no cached prefix).
        """
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            return []
        self._update_hashes(seq)
        bs = self.block_size
        limit = (seq.num_tokens - 1) // bs
        found: list[int] = []
        for i in range(limit):
            block_id = self._hash_to_block.get(seq.block_hashes[i])
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.token_ids != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                break  # hash collision: treat as a miss
            found.append(block_id)
        return found

    def record_lookup(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_cache_queries += num_query_tokens
        self.prefix_cache_hits += num_hit_tokens

    def register_full_blocks_of(self, seqs: list[Sequence]) -> None:
        """``register_full_blocks`` for each of a step's sequences, in one call: in a decode step
        all but about one in ``block_size`` filled no block, and are passed over on a compare."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        for seq in seqs:
            if seq.num_computed_tokens // bs > seq.num_registered_blocks:
                self.register_full_blocks(seq)

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publish the computed full blocks of ``seq`` so later requests can share them.

        Called after a step wrote their K/V: a block is only shared once its cache is valid.
        """
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        if full <= seq.num_registered_blocks:
            return
        self._update_hashes(seq)
        bs = self.block_size
        for i in range(seq.num_registered_blocks, full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                h = seq.block_hashes[i]
                if h not in self._hash_to_block:
                    block.hash = h
                    block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                    self._hash_to_block[h] = block.block_id
        seq.num_registered_blocks = full

    # ---- allocation ----------------------------------------------------------------------
    def allocate_slots(
        self, seq: Sequence, num_new_tokens: int, cached_blocks: list[int] | None = None
    ) -> bool:
        """Make room for ``num_new_tokens`` more tokens of ``seq``; False (no change) if full.

        ``cached_blocks`` (admission only) become the head of the block table and count as
        computed tokens.
        """
        if not cached_blocks:  # every decode step of every sequence: the short way
            table = seq.block_table
            need = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size) - len(table)
            if need > len(self._free):
                return False
            for _ in range(need):
                table.append(self._take_free_block())
            return True
        reviving = sum(1 for b in cached_blocks if self.blocks[b].ref_count == 0)
        have = len(seq.block_table) + len(cached_blocks)
        computed = seq.num_computed_tokens + len(cached_blocks) * self.block_size
        need = self.blocks_needed(computed + num_new_tokens) - have
        if need > len(self._free) - reviving:
            return False
        for block_id in cached_blocks:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
        seq.block_table.extend(cached_blocks)
        seq.num_computed_tokens = computed
        seq.num_registered_blocks = len(seq.block_table)
        for _ in range(need):
            seq.block_table.append(self._take_free_block())
        return True

    def _take_free_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)  # least recently released first
        block = self.blocks[block_id]
        if block.hash is not None:  # evict its cached prefix
            if self._hash_to_block.get(block.hash) == block_id:
                del self._hash_to_block[block.hash]
            block.hash = None
            block.token_ids = ()
        block.ref_count = 1
        return block_id

    def free(self, seq: Sequence) -> None:
        """Release every block of ``seq``; cached ones stay reusable until evicted."""
        for block_id in reversed(seq.block_table):  # tail blocks are the least shareable
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
                if block.hash is None:
                    self._free.move_to_end(block_id, last=False)  # nothing cached: reuse first
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = 0
