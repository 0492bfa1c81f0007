"""logit_bias and repetition/frequency/presence penalties: vLLM's semantics, checked against
transformers' own repetition penalty and a step-by-step reference for the other two."""

from __future__ import annotations

import pytest
import torch

from latlab.engine import LLM, SamplingParams
from latlab.errors import ConfigError

from ._reference import _hf_model, mixed_prompts

STEPS = 24  # a random model repeats itself within this many tokens


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(str(tiny_model_dir))


def _reference_greedy(model_dir, prompt, adjust) -> list[int]:
    """Greedy decoding with transformers' logits, ``adjust(logits, prompt, output)`` first."""
    model = _hf_model(str(model_dir))
    output: list[int] = []
    with torch.inference_mode():
        for _ in range(STEPS):
            logits = model(torch.tensor([prompt + output])).logits[0, -1].float()
            output.append(int(adjust(logits.clone(), prompt, output).argmax()))
    return output


def _counts(ids: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=vocab).float()


def test_repetition_penalty_matches_transformers(llm, tiny_model_dir):
    prompt = mixed_prompts(5)[4]
    model = _hf_model(str(tiny_model_dir))
    with torch.inference_mode():
        ref = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=STEPS,
            min_new_tokens=STEPS,
            do_sample=False,
            repetition_penalty=1.8,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
    params = SamplingParams(max_tokens=STEPS, ignore_eos=True, repetition_penalty=1.8)
    assert llm.generate([prompt], params)[0].token_ids == ref
    plain = SamplingParams(max_tokens=STEPS, ignore_eos=True)
    assert llm.generate([prompt], plain)[0].token_ids != ref  # the penalty did something


@pytest.mark.parametrize(("frequency", "presence"), [(1.5, 0.0), (0.0, 2.0), (0.7, -0.5)])
def test_frequency_and_presence_penalties_match_the_reference(
    llm, tiny_model_dir, frequency, presence
):
    prompt = mixed_prompts(5)[4]

    def adjust(logits, _prompt, output):
        counts = _counts(output, logits.shape[0])
        return logits - frequency * counts - presence * (counts > 0).float()

    params = SamplingParams(
        max_tokens=STEPS,
        ignore_eos=True,
        frequency_penalty=frequency,
        presence_penalty=presence,
    )
    expected = _reference_greedy(tiny_model_dir, prompt, adjust)
    assert llm.generate([prompt], params)[0].token_ids == expected
    plain = SamplingParams(max_tokens=STEPS, ignore_eos=True)
    assert llm.generate([prompt], plain)[0].token_ids != expected


def test_logit_bias_forces_and_forbids_tokens(llm):
    prompt = mixed_prompts(1)[0]
    plain = llm.generate([prompt], SamplingParams(max_tokens=6, ignore_eos=True))[0].token_ids
    forced = SamplingParams(max_tokens=6, ignore_eos=True, logit_bias={"42": 100})
    assert llm.generate([prompt], forced)[0].token_ids == [42] * 6
    banned = SamplingParams(max_tokens=6, ignore_eos=True, logit_bias={plain[0]: -100})
    assert plain[0] not in llm.generate([prompt], banned)[0].token_ids[:1]


def test_adjusted_and_plain_requests_batch_together(llm):
    prompts = mixed_prompts(4)
    plain = SamplingParams(max_tokens=8, ignore_eos=True)
    biased = SamplingParams(max_tokens=8, ignore_eos=True, logit_bias={7: 100})
    alone = [o.token_ids for o in llm.generate(prompts, plain)]
    mixed = llm.generate(prompts, [plain, biased, plain, biased])
    assert mixed[0].token_ids == alone[0] and mixed[2].token_ids == alone[2]
    assert mixed[1].token_ids == [7] * 8


def test_logit_bias_outside_the_vocabulary_is_a_config_error(llm):
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        llm.generate([[5, 6]], SamplingParams(max_tokens=2, logit_bias={10**6: 1}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", float("inf")),
        ("temperature", float("nan")),
        ("top_p", float("nan")),
        ("seed", 2**64),
        ("seed", -(2**63) - 1),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", float("inf")),
        ("presence_penalty", 2.5),
        ("frequency_penalty", float("nan")),
        ("logit_bias", {"x": 1}),
        ("logit_bias", {1: 101}),
        ("logit_bias", [1]),
    ],
)
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        SamplingParams(**{field: value})


def test_tiny_temperature_is_greedy_not_token_zero(llm):
    # 1e-40 underflows float32: logits / T overflowed to inf and every token came out as 0.
    prompt = mixed_prompts(1)[0]
    greedy = llm.generate([prompt], SamplingParams(max_tokens=6, ignore_eos=True))[0]
    tiny = SamplingParams(temperature=1e-40, max_tokens=6, ignore_eos=True, seed=1)
    assert tiny.temperature == 0.0
    assert llm.generate([prompt], tiny)[0].token_ids == greedy.token_ids


def test_64_bit_seeds_are_accepted(llm):
    for seed in (2**64 - 1, -(2**63)):
        params = SamplingParams(temperature=1.0, max_tokens=2, ignore_eos=True, seed=seed)
        assert len(llm.generate([[5, 6]], params)[0].token_ids) == 2
