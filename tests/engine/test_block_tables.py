"""The step's block-table tensor, kept between steps, equals the one built from the lists each
step: as sequences grow, get preempted (new lists), swap batch positions, carry drafts."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latlab.engine import LLM, SamplingParams
from latlab.engine.block_tables import BlockTables
from latlab.engine.model_runner import ModelRunner
from latlab.model_files import load_model_config
from latlab.plan.kv import kv_bytes_per_token


def _reference(tables: list[list[int]], needed: list[int]) -> torch.Tensor:
    """What the runner built before: each table cut to the blocks needed, zero-padded."""
    width = max(needed)
    return torch.tensor([t[:n] + [0] * (width - n) for t, n in zip(tables, needed, strict=True)],
                        dtype=torch.long)  # fmt: skip


_STEP = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(["grow", "free", "keep"]), st.integers(0, 3)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, min_size=1, max_size=25))
def test_kept_tables_equal_tables_built_from_lists(steps):
    tables = [[] for _ in range(6)]  # six sequences' block tables
    kept, next_block = BlockTables(), 1
    for step in steps:
        batch, needed = [], []
        for seq, action, cut in dict((s[0], s) for s in step).values():  # each seq once
            if action == "free":  # preempted: the block manager hands it a new list
                tables[seq] = []
            if action != "keep" or not tables[seq]:
                tables[seq].extend(range(next_block, next_block + 1 + cut))
                next_block += 1 + cut
            batch.append(tables[seq])
            needed.append(max(1, len(tables[seq]) - cut))  # drafts' blocks may go unused
        got = kept.build(batch, needed)
        assert torch.equal(got, _reference(batch, needed))
        assert got.dtype == torch.long and got.is_contiguous()


def test_tensor_is_a_copy_not_the_kept_array():
    kept, table = BlockTables(), [3, 4]
    first = kept.build([table], [2])
    table.append(5)
    kept.build([table], [3])
    assert first.tolist() == [[3, 4]]


def _checked_builds(monkeypatch) -> list[int]:
    """Check every step's kept tables against the lists; the number of steps checked."""
    checked = [0]
    build = BlockTables.build

    def checking_build(self, tables, needed):
        got = build(self, tables, needed)
        assert torch.equal(got, _reference(tables, needed))
        checked[0] += 1
        return got

    monkeypatch.setattr(BlockTables, "build", checking_build)
    return checked


def test_engine_tables_under_preemption(tiny_model_dir, monkeypatch):
    checked = _checked_builds(monkeypatch)
    per_token = kv_bytes_per_token(load_model_config(str(tiny_model_dir)), "float32")
    llm = LLM(str(tiny_model_dir), block_size=4, kv_cache_bytes=14 * 4 * per_token,
              max_num_batched_tokens=16)  # fmt: skip
    prompts = [[(7 * i + j) % 50 + 1 for j in range(5 + 7 * i)] for i in range(6)]
    outs = llm.generate(prompts, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
    assert llm.engine.stats().num_preemptions > 0 and checked[0] > 10
    assert all(len(o.token_ids) == 10 for o in outs)


def test_engine_tables_with_drafts(tiny_model_dir, monkeypatch):
    checked = _checked_builds(monkeypatch)
    llm = LLM(str(tiny_model_dir), block_size=4, num_speculative_tokens=3)
    prompt = [5, 6, 7, 8] * 6  # repeats: prompt lookup proposes drafts
    llm.generate([prompt, prompt[1:]], SamplingParams(max_tokens=24, temperature=0.0,
                                                      ignore_eos=True))  # fmt: skip
    assert llm.engine.stats().spec_draft_tokens_total > 0 and checked[0] > 5


def test_score_uses_a_table_of_its_own(tiny_model_dir):
    runner: ModelRunner = LLM(str(tiny_model_dir), block_size=4).engine.runner
    logits = runner.score([1, 2, 3, 4, 5, 6])
    assert logits.shape[0] == 6 and torch.isfinite(logits).all()
