"""A step that repeats the last one is built from what that one recorded (steady_batch.py): its
inputs equal the ones the ordinary path reads from the sequences, under preemption, aborts,
admissions, drafts, stops, mixed sampling and logprobs; the native op equals its torch ops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latlab.engine import LLM, SamplingParams
from latlab.engine.block_tables import BlockTables
from latlab.engine.kernels import step_ops
from latlab.engine.model_runner import ModelRunner, any_logprobs
from latlab.engine.sampler import argmax_only
from latlab.engine.steady_batch import decode_inputs_torch
from latlab.model_files import load_model_config
from latlab.plan.kv import kv_bytes_per_token

from ._reference import available_or_skip


@pytest.fixture(scope="module")
def ops():
    return available_or_skip(step_ops)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9),  # batch
    st.sampled_from([1, 4, 16]),  # block size
    st.integers(0, 40),  # offset
    st.data(),
)
def test_native_decode_inputs_equal_the_torch_ops(ops, batch, block_size, offset, data):
    ends = data.draw(st.lists(st.integers(0, 90), min_size=batch, max_size=batch))
    width = (max(ends) + offset) // block_size + 1
    gen = torch.Generator().manual_seed(batch * 1000 + offset)
    tables = torch.randint(0, 500, (batch + 3, width + 2), generator=gen)  # wider than asked
    args = (torch.tensor(ends), offset, tables, width, block_size)
    for got, want in zip(ops.decode_inputs(*args), decode_inputs_torch(*args), strict=True):
        assert got.dtype == want.dtype == torch.long and torch.equal(got, want)


def test_native_decode_inputs_refuse_what_they_cannot_read(ops):
    tables = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="past the 3 blocks"):
        ops.decode_inputs(torch.tensor([47]), 1, tables, 3, 16)  # position 48: a fourth block
    with pytest.raises(RuntimeError, match="rows of width"):
        ops.decode_inputs(torch.tensor([1] * 5), 0, tables, 3, 16)  # 5 rows of a 4-row array
    with pytest.raises(RuntimeError, match="rows of width"):
        ops.decode_inputs(torch.tensor([1]), 0, tables, 4, 16)
    with pytest.raises(RuntimeError, match="int64"):
        ops.decode_inputs(torch.tensor([1], dtype=torch.int32), 0, tables, 1, 16)


def test_extend_row_writes_only_the_new_blocks():
    kept, table = BlockTables(), [3, 4]
    assert kept.build([[9], table], [1, 2]).tolist() == [[9, 0], [3, 4]]
    table.append(5)
    kept.extend_row(1, 3, table)
    assert kept.tensor[:2, :3].tolist() == [[9, 0, 0], [3, 4, 5]]


def test_argmax_only_says_when_the_logits_need_nothing_else(tiny_model_dir):
    engine = LLM(str(tiny_model_dir)).engine

    def seq(**params):
        return engine.make_sequence([1, 2, 3], SamplingParams(**params))

    assert argmax_only([seq(temperature=0.0), seq(temperature=0.0, min_tokens=0)])
    for params in ({"temperature": 0.7}, {"logit_bias": {5: 1.0}}, {"presence_penalty": 0.5},
                   {"min_tokens": 2}):  # fmt: skip
        assert not argmax_only([seq(temperature=0.0), seq(**{"temperature": 0.0, **params})])
    assert any_logprobs([seq(logprobs=2)]) and not any_logprobs([seq()])


def _checked_steady_steps(monkeypatch) -> list[int]:
    """Build every repeated step both ways and compare; the repeated steps seen, and of them
    the ones that take the argmax alone."""
    seen = [0, 0]
    steady_inputs = ModelRunner._steady_inputs

    def both_ways(self, sched, steady):
        got = steady_inputs(self, sched, steady)
        pending = self.steady._pending
        want = self._prepare(sched)  # nothing armed now: the ordinary path
        self.steady._pending = pending
        (g_ids, g_pos, _, g_meta, g_rows), g_seqs, g_last, g_prompt, greedy = got
        (w_ids, w_pos, _, w_meta, w_rows), w_seqs, w_last, w_prompt, _ = want
        for g, w in [(g_ids, w_ids), (g_pos, w_pos), (g_rows, w_rows),
                     (g_meta.slot_mapping, w_meta.slot_mapping),
                     (g_meta.block_tables, w_meta.block_tables)]:  # fmt: skip
            assert g.dtype == w.dtype and torch.equal(g, w)
        if w_meta.seq_lens is not None:
            assert torch.equal(g_meta.seq_lens, w_meta.seq_lens)
        assert g_meta.native_step is w_meta.native_step
        assert g_seqs == w_seqs and g_last == w_last and g_prompt == w_prompt == []
        if greedy:  # the argmax alone only where nothing adjusts the logits or reads them
            assert argmax_only(w_seqs) and not any_logprobs(w_seqs)
        seen[0] += 1
        seen[1] += greedy
        return got

    monkeypatch.setattr(ModelRunner, "_steady_inputs", both_ways)
    return seen


GREEDY_KINDS = [
    SamplingParams(max_tokens=23, temperature=0.0, ignore_eos=True),
    # nearly every token stops it, so the min_tokens mask picks its first 6 tokens
    SamplingParams(max_tokens=21, temperature=0.0, min_tokens=6, stop_token_ids=[*range(2, 4000)]),
    SamplingParams(max_tokens=15, temperature=0.0, logit_bias={1695: 50.0}, ignore_eos=True),
    SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[7, 11, 13]),
]
MIXED_KINDS = [
    *GREEDY_KINDS,
    SamplingParams(max_tokens=17, temperature=0.9, seed=4, ignore_eos=True),
    SamplingParams(max_tokens=19, temperature=0.0, logprobs=2, ignore_eos=True),
]


def _requests(kinds: list[SamplingParams]) -> list[tuple[list[int], SamplingParams]]:
    """Prompts of many lengths (blocks crossed at different steps), each kind in turn."""
    return [([(5 * i + j) % 60 + 1 for j in range(3 + 5 * i)], kinds[i % len(kinds)])
            for i in range(10)]  # fmt: skip


def _run(llm: LLM, kinds=MIXED_KINDS, abort_at: int | None = None) -> dict[str, list[int]]:
    """Admit requests over the first steps, abort one midway; each request's tokens."""
    engine, pending, done = llm.engine, _requests(kinds), {}
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % 3 == 0:
            engine.add_request(*pending.pop(0), request_id=f"r{step // 3}")
        if step == abort_at:
            assert engine.abort("r2")  # admitted at step 6, 15 tokens to go
        for out in engine.step():
            done.setdefault(out.request_id, []).extend(out.new_token_ids)
        step += 1
    return done


@pytest.mark.parametrize("native_attention", [None, False])
def test_repeated_steps_equal_the_ordinary_path(tiny_model_dir, monkeypatch, native_attention):
    seen = _checked_steady_steps(monkeypatch)
    per_token = kv_bytes_per_token(load_model_config(str(tiny_model_dir)), "float32")
    llm = LLM(str(tiny_model_dir), block_size=4, kv_cache_bytes=40 * 4 * per_token,
              max_num_batched_tokens=24, native_attention=native_attention)  # fmt: skip
    _run(llm, abort_at=12)
    assert llm.engine.stats().num_preemptions > 0 and seen[0] > 20


def test_greedy_batches_take_the_argmax_alone(tiny_model_dir, monkeypatch):
    """Only while no request in the batch has its logits adjusted or read."""
    seen = _checked_steady_steps(monkeypatch)
    plain = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    LLM(str(tiny_model_dir), block_size=4).generate([[3, 4, 5], [6, 7]], plain)
    assert seen[1] == seen[0] > 5
    seen[:] = [0, 0]
    _run(LLM(str(tiny_model_dir), block_size=4), GREEDY_KINDS)
    assert 0 < seen[1] < seen[0]  # not while a bias or a min_tokens mask is in the batch


def test_repeated_steps_with_drafts(tiny_model_dir, monkeypatch):
    seen = _checked_steady_steps(monkeypatch)
    llm = LLM(str(tiny_model_dir), block_size=4, num_speculative_tokens=3)
    prompt = [5, 6, 7, 8] * 6  # repeats: prompt lookup proposes drafts
    llm.generate([prompt, prompt[1:], [9, 3, 2]],
                 SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True))  # fmt: skip
    assert llm.engine.stats().spec_draft_tokens_total > 0 and seen[0] > 5


@pytest.mark.parametrize("kinds", [MIXED_KINDS, GREEDY_KINDS])
def test_the_same_tokens_without_repeated_steps(tiny_model_dir, monkeypatch, kinds):
    """Greedy (with a min_tokens mask, a bias, stops), seeded and logprob requests give the
    same tokens with the record turned off; batches of greedy requests alone take the argmax
    path, which must still apply what adjusts the logits."""
    runs = []
    for steady in (True, False):
        llm = LLM(str(tiny_model_dir), block_size=4)
        if not steady:
            monkeypatch.setattr(llm.engine.runner.steady, "take", lambda seqs, counts: None)
        runs.append(_run(llm, kinds))
    assert runs[0] == runs[1] and len(runs[0]) == 10
