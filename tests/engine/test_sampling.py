"""SamplingParams validation, the sampler's filters, seeds and stop conditions."""

from __future__ import annotations

import pytest
import torch

from latlab.engine import LLM, SamplingParams
from latlab.engine.sampler import apply_top_k_top_p
from latlab.errors import ConfigError

from ._reference import mixed_prompts


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", "hot"),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("top_k", 2.5),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("max_tokens", 10**9),
        ("max_tokens", True),
        ("min_tokens", -1),
        ("seed", "x"),
        ("ignore_eos", "yes"),
        ("stop", 5),
        ("stop", [""]),
        ("stop_token_ids", [-1]),
        ("stop_token_ids", "7"),
    ],
)
def test_bad_sampling_params_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens_is_rejected():
    with pytest.raises(ConfigError, match="min_tokens"):
        SamplingParams(max_tokens=3, min_tokens=4)


def test_defaults_and_normalisation():
    p = SamplingParams(stop="END", top_k=-1)
    assert p.greedy and p.stop == ["END"] and p.top_k == 0 and p.stop_token_ids == []


def test_top_k_top_p_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    out = apply_top_k_top_p(logits.clone(), top_k=[2, 0], top_p=[1.0, 0.7])
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]
    # nucleus 0.7: 0.5 alone < 0.7, so 0.3 is kept too; mass above 0.15 is 0.8 > 0.7
    assert torch.isfinite(out[1]).tolist() == [True, True, False, False]
    assert torch.allclose(out[0, :2], logits[0, :2])


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    prompts = mixed_prompts(4)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=123, max_tokens=8)
    alone = llm.generate([prompts[0]], seeded)[0].token_ids
    unseeded = SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True)
    mixed = llm.generate(prompts, [seeded, unseeded, unseeded, unseeded])[0].token_ids
    assert alone == mixed
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=124, max_tokens=8)
    assert llm.generate([prompts[0]] * 3, [seeded, other_seed, seeded])[0].token_ids == alone


def test_top_k_one_is_greedy(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    prompts = mixed_prompts(3)
    greedy = llm.generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
    top1 = llm.generate(
        prompts, SamplingParams(temperature=0.8, top_k=1, max_tokens=6, ignore_eos=True)
    )
    assert [o.token_ids for o in greedy] == [o.token_ids for o in top1]


def test_stop_token_ids_and_min_tokens(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    prompt = mixed_prompts(1)[0]
    free_run = llm.generate([prompt], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    stop_at = free_run.token_ids[3]
    first = free_run.token_ids.index(stop_at)
    out = llm.generate([prompt], SamplingParams(max_tokens=8, stop_token_ids=[stop_at]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free_run.token_ids[: first + 1]
    # min_tokens forbids the stop token early, so the run must differ or go on past it
    late = SamplingParams(max_tokens=8, min_tokens=first + 2, stop_token_ids=[stop_at])
    out2 = llm.generate([prompt], late)[0]
    assert stop_at not in out2.token_ids[: first + 2]
    assert len(out2.token_ids) >= first + 2


def test_stop_string_is_trimmed_from_text(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    prompt = mixed_prompts(2)[1]
    full = llm.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True))[0]
    text = full.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"need a visible stop string, text was {text!r}"
    out = llm.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True, stop=stop))[0]
    assert out.finish_reason == "stop"
    assert out.text == text[: text.index(stop)]
    assert stop not in out.text


def test_greedy_tokens_are_argmax_first_of_ties():
    from latlab.engine.sampler import greedy_tokens

    logits = torch.randn(64, 4096)
    logits[3, [7, 9, 4000]] = 50.0  # a tie: the first index wins, as argmax says
    logits[5] = float("-inf")
    logits[5, 11] = 0.0
    assert torch.equal(greedy_tokens(logits), logits.argmax(dim=-1))
    assert greedy_tokens(logits)[3] == 7 and greedy_tokens(logits)[5] == 11
