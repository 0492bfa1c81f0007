"""Prompt-lookup speculative decoding: drafts by hand, and engine output identical to greedy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from latlab.engine import LLM, EngineConfig, SamplingParams
from latlab.engine.sampler import Sampler
from latlab.engine.spec_decode import PromptLookupConfig, accepted_length, find_draft
from latlab.errors import ConfigError
from latlab.model_files import load_model_config
from latlab.plan.kv import kv_bytes_per_token

from ._reference import hf_greedy, mixed_prompts

# speculate at any batch size here: these tests check exactness, not the speed policy
SPEC = {"num_speculative_tokens": 4, "speculative_max_batch": 64}


# ---- drafts ------------------------------------------------------------------------------


def test_find_draft_by_hand():
    config = PromptLookupConfig(num_draft_tokens=3, max_ngram=2)
    # Trailing bigram (7, 8) occurred at the start, followed by 9, 10, 11.
    assert find_draft([7, 8, 9, 10, 11, 7, 8], config) == [9, 10, 11]
    # No bigram match: fall back to the unigram 8.
    assert find_draft([8, 5, 6, 8], config) == [5, 6, 8]
    assert find_draft([1, 2, 3], config) == []
    assert find_draft([5], config) == []


def test_find_draft_prefers_longest_ngram_then_earliest_occurrence():
    config = PromptLookupConfig(num_draft_tokens=2, max_ngram=3)
    # unigram 3 occurs at 0 (-> 9) but the trigram 1 2 3 occurs at 3 (-> 4 5): longest wins
    assert find_draft([3, 9, 9, 1, 2, 3, 4, 5, 1, 2, 3], config) == [4, 5]
    # two earlier occurrences of (1, 2): the earliest, with the longer continuation
    config = PromptLookupConfig(num_draft_tokens=4, max_ngram=2, min_ngram=2)
    assert find_draft([1, 2, 7, 7, 7, 1, 2, 8, 1, 2], config) == [7, 7, 7, 1]


def test_find_draft_limit_and_min_ngram():
    config = PromptLookupConfig(num_draft_tokens=8, max_ngram=2, min_ngram=2)
    assert find_draft([7, 8, 9, 10, 11, 7, 8], config, limit=2) == [9, 10]
    assert find_draft([7, 8, 9, 10, 11, 7, 8], config, limit=0) == []
    assert find_draft([8, 5, 6, 8], config) == []  # only a unigram matches, min is 2


def test_find_draft_never_matches_across_token_boundaries():
    # As 4-byte items, (256, 1) and (1, 0) contain each other's bytes off the token grid:
    # 256 = 00 01 00 00, 1 = 01 00 00 00. Only an aligned match may count.
    config = PromptLookupConfig(num_draft_tokens=2, max_ngram=1)
    assert find_draft([256, 1, 9, 65536], config) == []
    assert find_draft([256, 1, 9, 1], config) == [9, 1]


def test_accepted_length_by_hand():
    assert accepted_length([5, 6, 7], [5, 6, 7, 8]) == 3
    assert accepted_length([5, 6, 7], [5, 9, 7, 8]) == 1
    assert accepted_length([5, 6, 7], [4, 6, 7, 8]) == 0
    assert accepted_length([], [4]) == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"num_draft_tokens": 0}, {"min_ngram": 0}, {"min_ngram": 3, "max_ngram": 2}],
)
def test_prompt_lookup_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        PromptLookupConfig(**kwargs)


# ---- the engine: output identical to plain greedy ----------------------------------------


def _generate(model_dir, prompts, params, **config):
    llm = LLM(str(model_dir), **config)
    outs = llm.generate(prompts, params)
    return [o.token_ids for o in outs], llm


def _repetitive_prompts() -> list[list[int]]:
    base = mixed_prompts(8, seed=3)
    return [p * 3 for p in base] + [[11, 12, 13, 14, 15] * 6]


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="default"),
        pytest.param({"max_num_batched_tokens": 8, "block_size": 4}, id="budget-8-blocks-4"),
        pytest.param({"enable_prefix_caching": False}, id="no-prefix-cache"),
        pytest.param({"prompt_lookup_max": 1, "num_speculative_tokens": 7}, id="unigram-7"),
    ],
)
def test_speculative_greedy_matches_transformers(tiny_model_dir, config):
    prompts = mixed_prompts(6) + _repetitive_prompts()
    params = SamplingParams(max_tokens=24)
    got, llm = _generate(tiny_model_dir, prompts, params, **{**SPEC, **config})
    assert got == hf_greedy(tiny_model_dir, prompts, 24)
    stats = llm.engine.stats()
    # both paths ran: some drafts accepted, some rejected
    assert 0 < stats.spec_accepted_tokens_total < stats.spec_draft_tokens_total
    assert stats.generation_tokens_total == sum(len(t) for t in got)
    assert stats.kv_cache_usage == 0.0


def test_speculation_takes_fewer_steps(tiny_model_dir):
    prompts = [[11, 12, 13, 14, 15] * 6]
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    steps = {}
    for name, config in (("plain", {}), ("spec", SPEC)):
        llm = LLM(str(tiny_model_dir), **config)
        llm.engine.add_request(prompts[0], params)
        tokens = []
        while llm.engine.has_unfinished():
            for out in llm.engine.step():
                tokens += out.new_token_ids
            steps[name] = steps.get(name, 0) + 1
        steps[name + "_tokens"] = tokens
    assert steps["spec_tokens"] == steps["plain_tokens"]
    assert steps["spec"] < steps["plain"] == 40  # 1 prefill + 39 decodes, 1 token each


def test_speculative_matches_on_random_models(qwen2_model_dir, llama3_tied_model_dir):
    prompts = mixed_prompts(4) + _repetitive_prompts()[:3]
    params = SamplingParams(max_tokens=16)
    for model_dir in (qwen2_model_dir, llama3_tied_model_dir):
        got, _ = _generate(model_dir, prompts, params, max_num_batched_tokens=16, **SPEC)
        assert got == hf_greedy(model_dir, prompts, 16)


def test_speculative_with_prefix_cache_hits_and_preemption(tiny_model_dir):
    prompts = _repetitive_prompts()[:6]
    per_token = kv_bytes_per_token(load_model_config(str(tiny_model_dir)), "float32")
    config = {"block_size": 4, "kv_cache_bytes": 40 * 4 * per_token, "max_num_batched_tokens": 16}
    params = SamplingParams(max_tokens=12)
    got, llm = _generate(tiny_model_dir, prompts, params, **SPEC, **config)
    again = [o.token_ids for o in llm.generate(prompts, params)]
    expected = hf_greedy(tiny_model_dir, prompts, 12)
    assert got == again == expected
    stats = llm.engine.stats()
    assert stats.num_preemptions > 0
    assert stats.prefix_cache_hits > 0
    assert stats.spec_accepted_tokens_total > 0
    assert stats.kv_cache_usage == 0.0


@pytest.mark.parametrize("max_tokens", [1, 2, 5])
def test_speculation_respects_max_tokens(tiny_model_dir, max_tokens):
    prompts = _repetitive_prompts()
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    got, _ = _generate(tiny_model_dir, prompts, params, **SPEC)
    plain, _ = _generate(tiny_model_dir, prompts, params)
    assert got == plain
    assert all(len(t) == max_tokens for t in got)


def test_speculation_stops_at_stop_token_inside_an_accepted_draft(tiny_model_dir):
    prompt = [11, 12, 13, 14, 15] * 6
    free_run, _ = _generate(tiny_model_dir, [prompt], SamplingParams(max_tokens=30))
    stop_at = free_run[0][len(free_run[0]) // 2]
    params = SamplingParams(max_tokens=30, stop_token_ids=[stop_at], ignore_eos=True)
    got, _ = _generate(tiny_model_dir, [prompt], params, **SPEC)
    plain, _ = _generate(tiny_model_dir, [prompt], params)
    assert got == plain
    assert got[0][-1] == stop_at and stop_at not in got[0][:-1]


def test_min_tokens_requests_are_not_speculated_until_reached(tiny_model_dir):
    prompt = [11, 12, 13, 14, 15] * 6
    params = SamplingParams(max_tokens=12, min_tokens=12)
    llm = LLM(str(tiny_model_dir), **SPEC)
    got = llm.generate([prompt], params)[0].token_ids
    assert llm.engine.stats().spec_draft_tokens_total == 0
    assert got == LLM(str(tiny_model_dir)).generate([prompt], params)[0].token_ids


def _sampled_seq(seed: int):
    params = SamplingParams(temperature=1.0)
    return SimpleNamespace(params=params, generator=torch.Generator().manual_seed(seed))


def test_speculative_sampling_keeps_the_distribution():
    """Draft [0, 1] over hand-made p0, p1, p2: every emitted token follows p, whatever the draft."""
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    logits = p.clamp_min(1e-30).log()
    sampler = Sampler(seed=0)
    seq = _sampled_seq(7)
    n = 20000
    runs = [sampler.verify_draft(logits, [0, 1], seq) for _ in range(n)]
    first = torch.bincount(torch.tensor([r[0] for r in runs]), minlength=4) / n
    assert torch.allclose(first, p[0], atol=0.015), first
    after_0 = [r for r in runs if r[0] == 0]
    second = torch.bincount(torch.tensor([r[1] for r in after_0]), minlength=4) / len(after_0)
    assert torch.allclose(second, p[1], atol=0.02), second
    after_01 = [r for r in after_0 if r[1] == 1]
    third = torch.bincount(torch.tensor([r[2] for r in after_01]), minlength=4) / len(after_01)
    assert torch.allclose(third, p[2], atol=0.025), third
    # a run stops right after its first rejection, with a token other than the draft's
    for r in runs:
        if r[0] != 0:
            assert len(r) == 1
        elif r[1] != 1:
            assert len(r) == 2
        else:
            assert len(r) == 3
    assert 3 not in first.nonzero().flatten().tolist()  # probability 0 is never drawn


def test_sampled_requests_are_speculated_and_seeded_ones_reproduce(tiny_model_dir):
    # this random model's logits are nearly flat (top-2 margins ~0.05): only a very low
    # temperature keeps it in the loops that drafts are made of
    prompt = [11, 12, 13, 14, 15] * 6
    params = [
        SamplingParams(max_tokens=24, temperature=0.005, seed=5, ignore_eos=True),
        SamplingParams(max_tokens=24, temperature=0.005, top_k=20, top_p=0.9, ignore_eos=True),
    ]
    llm = LLM(str(tiny_model_dir), **SPEC)
    first = llm.generate([prompt, prompt], params)
    stats = llm.engine.stats()
    assert stats.spec_draft_tokens_total > 0 and stats.spec_accepted_tokens_total > 0
    assert all(len(o.token_ids) == 24 for o in first)
    assert stats.kv_cache_usage == 0.0
    again = llm.generate([prompt], params[:1])[0]
    assert again.token_ids == first[0].token_ids  # same seed, same tokens


def test_no_drafts_above_the_batch_limit(tiny_model_dir):
    prompts = _repetitive_prompts()[:4]
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    llm = LLM(str(tiny_model_dir), **{**SPEC, "speculative_max_batch": 3})
    outs = llm.generate(prompts, params)
    assert llm.engine.stats().spec_draft_tokens_total == 0  # 4 running > 3 all along
    narrow = LLM(str(tiny_model_dir), **{**SPEC, "speculative_max_batch": 4})
    assert [o.token_ids for o in narrow.generate(prompts, params)] == [o.token_ids for o in outs]
    assert narrow.engine.stats().spec_draft_tokens_total > 0


def test_drafts_back_off_from_a_sequence_whose_drafts_miss(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), **SPEC)
    seq = llm.engine.make_sequence([5, 6, 7], SamplingParams(max_tokens=4))
    cooldowns = []
    for _ in range(8):
        llm.engine._record_draft(seq, drafted=4, accepted=0)
        cooldowns.append(seq.draft_cooldown)
    assert cooldowns == [1, 2, 4, 8, 16, 32, 32, 32]
    assert llm.engine._propose_draft(seq, 4) == []  # cooling down: no search, no draft
    assert seq.draft_cooldown == 31
    llm.engine._record_draft(seq, drafted=4, accepted=2)
    assert seq.draft_misses == 0
    stats = llm.engine.stats()
    assert (stats.spec_draft_tokens_total, stats.spec_accepted_tokens_total) == (36, 2)


@pytest.mark.parametrize(
    "bad",
    [
        {"num_speculative_tokens": -1},
        {"speculative_max_batch": 0},
        {"prompt_lookup_min": 0},
        {"prompt_lookup_min": 4, "prompt_lookup_max": 2},
    ],
)
def test_engine_config_rejects_bad_speculation_settings(bad):
    with pytest.raises(ConfigError):
        EngineConfig(**bad)
