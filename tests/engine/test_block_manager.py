"""Block manager: allocation, freeing, ref counts, prefix hits and LRU eviction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from latlab.engine.block_manager import BlockManager
from latlab.engine.sampling_params import SamplingParams
from latlab.engine.sequence import Sequence

BS = 4


def _seq(tokens: list[int], rid: str = "r") -> Sequence:
    return Sequence(rid, None, list(tokens), SamplingParams())


def _run_prefill(bm: BlockManager, seq: Sequence) -> bool:
    """Admit ``seq`` with its cached prefix and 'compute' the rest in one go."""
    cached = bm.find_cached_prefix(seq)
    if not bm.allocate_slots(seq, seq.num_tokens - len(cached) * BS, cached):
        return False
    seq.num_computed_tokens = seq.num_tokens
    bm.register_full_blocks(seq)
    return True


def check_invariants(bm: BlockManager, live: list[Sequence]) -> None:
    refs = [0] * bm.num_blocks
    for seq in live:
        assert len(seq.block_table) >= bm.blocks_needed(seq.num_computed_tokens)
        for b in seq.block_table:
            refs[b] += 1
    for block in bm.blocks:
        assert block.ref_count == refs[block.block_id]
        # a block is free exactly when nobody references it
        assert bm.is_free(block.block_id) == (block.ref_count == 0)
    assert bm.num_free_blocks == sum(1 for r in refs if r == 0)
    for h, block_id in bm.cached_block_ids().items():
        assert bm.blocks[block_id].hash == h
    assert 0.0 <= bm.usage <= 1.0


def test_allocate_and_free_hand_counted():
    bm = BlockManager(num_blocks=8, block_size=BS)
    seq = _seq(list(range(10)))  # 10 tokens -> 3 blocks
    assert bm.allocate_slots(seq, 10)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    assert bm.usage == 3 / 8
    seq.num_computed_tokens = 10
    bm.register_full_blocks(seq)  # 2 full blocks become shareable
    assert len(bm.cached_block_ids()) == 2
    bm.free(seq)
    assert bm.num_free_blocks == 8 and bm.usage == 0.0
    assert len(bm.cached_block_ids()) == 2  # still cached while free


def test_a_step_s_sequences_register_each_block_as_it_fills():
    """Decoding token by token, each block is shareable from the step that fills it."""
    bm = BlockManager(num_blocks=16, block_size=BS)
    seqs = [_seq([100 * n + t for t in range(n)], rid=str(n)) for n in (3, 4, 6)]  # unlike
    for seq in seqs:
        assert bm.allocate_slots(seq, seq.num_tokens)
    for _ in range(9):
        for seq in seqs:
            seq.num_computed_tokens = seq.num_tokens  # the step wrote their K/V
        bm.register_full_blocks_of(seqs)
        for seq in seqs:
            assert seq.num_registered_blocks == seq.num_tokens // BS
            seq.token_ids.append(seq.token_ids[0] + seq.num_tokens)  # the sampled token
            assert bm.allocate_slots(seq, 1)
    assert len(bm.cached_block_ids()) == sum(seq.num_registered_blocks for seq in seqs) > 6
    off = BlockManager(num_blocks=4, block_size=BS, enable_prefix_caching=False)
    seq = _seq(list(range(8)))
    assert off.allocate_slots(seq, 8)
    seq.num_computed_tokens = 8
    off.register_full_blocks_of([seq])
    assert seq.num_registered_blocks == 0 and not off.cached_block_ids()


def test_prefix_hit_shares_blocks_and_counts_refs():
    bm = BlockManager(num_blocks=8, block_size=BS)
    a = _seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    assert _run_prefill(bm, a)
    b = _seq([1, 2, 3, 4, 5, 6, 7, 8, 42, 43], "b")
    cached = bm.find_cached_prefix(b)
    assert cached == a.block_table[:2]
    assert bm.allocate_slots(b, b.num_tokens - 8, cached)
    assert b.num_computed_tokens == 8
    assert [bm.blocks[i].ref_count for i in cached] == [2, 2]
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in cached] == [1, 1]
    check_invariants(bm, [b])


def test_full_prompt_hit_leaves_last_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=BS)
    a = _seq(list(range(8)), "a")
    assert _run_prefill(bm, a)
    same = _seq(list(range(8)), "b")
    assert bm.find_cached_prefix(same) == a.block_table[:1]  # not both: 1 token must run


def test_different_prefix_same_block_is_a_miss():
    bm = BlockManager(num_blocks=8, block_size=BS)
    assert _run_prefill(bm, _seq([1, 2, 3, 4, 5, 6, 7, 8, 0], "a"))
    # second block equal, first different: the chained hash must not match
    assert bm.find_cached_prefix(_seq([9, 9, 9, 9, 5, 6, 7, 8, 0], "b")) == []


def test_lru_eviction_of_unreferenced_cached_blocks():
    bm = BlockManager(num_blocks=4, block_size=BS)
    old, new = _seq([1] * 5, "old"), _seq([2] * 5, "new")
    assert _run_prefill(bm, old)
    bm.free(old)
    assert _run_prefill(bm, new)
    bm.free(new)
    # the unhashed tail blocks go first, then the oldest cached block
    hog = _seq([3] * 12, "hog")
    assert bm.allocate_slots(hog, 12)
    assert bm.find_cached_prefix(_seq([1] * 5)) == []  # old prefix evicted
    assert bm.find_cached_prefix(_seq([2] * 5)) != []  # newer one survived


def test_allocation_fails_without_side_effects_when_full():
    bm = BlockManager(num_blocks=2, block_size=BS)
    seq = _seq(list(range(12)))
    assert not bm.allocate_slots(seq, 12)
    assert seq.block_table == [] and bm.num_free_blocks == 2


def test_prefix_caching_off_never_hits():
    bm = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    assert _run_prefill(bm, _seq(list(range(9)), "a"))
    assert bm.find_cached_prefix(_seq(list(range(9)), "b")) == []
    assert bm.cached_block_ids() == {}


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "decode", "free"]),
        st.lists(st.integers(0, 2), min_size=1, max_size=14),  # tiny alphabet: shared prefixes
        st.integers(0, 10),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops, num_blocks=st.integers(1, 12))
def test_invariants_hold_under_random_operations(ops, num_blocks):
    bm = BlockManager(num_blocks=num_blocks, block_size=BS)
    live: list[Sequence] = []
    hits_before = 0
    for i, (op, tokens, pick) in enumerate(ops):
        if op == "add":
            seq = _seq(tokens, f"s{i}")
            expected_hit = bm.find_cached_prefix(seq)
            cached_tokens = len(expected_hit) * BS
            if _run_prefill(bm, seq):
                live.append(seq)
                bm.record_lookup(seq.num_tokens, cached_tokens)
                # a hit means the shared blocks hold exactly these tokens
                for j, b in enumerate(expected_hit):
                    assert bm.blocks[b].token_ids == tuple(tokens[j * BS : (j + 1) * BS])
        elif op == "decode" and live:
            seq = live[pick % len(live)]
            seq.token_ids.append(pick % 3)
            if bm.allocate_slots(seq, 1):
                seq.num_computed_tokens += 1
                bm.register_full_blocks(seq)
            else:
                seq.token_ids.pop()
        elif op == "free" and live:
            bm.free(live.pop(pick % len(live)))
        check_invariants(bm, live)
        assert bm.prefix_cache_hits >= hits_before
        assert bm.prefix_cache_hits <= bm.prefix_cache_queries
        hits_before = bm.prefix_cache_hits
    for seq in live:
        bm.free(seq)
    assert bm.num_free_blocks == num_blocks  # every block comes back
