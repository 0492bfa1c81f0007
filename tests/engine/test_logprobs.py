"""Log-probabilities of generated and prompt tokens equal transformers' own (fp32), whatever
the chunking, batching or prefix cache; ranks and top-k alternatives as vLLM reports them."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from latlab.engine import LLM, SamplingParams
from latlab.errors import ConfigError

from ._reference import _hf_model, mixed_prompts


@functools.cache
def _hf_logprobs(model_dir: str, tokens: tuple[int, ...]) -> torch.Tensor:
    with torch.inference_mode():
        logits = _hf_model(model_dir)(torch.tensor([tokens])).logits[0]
    return torch.log_softmax(logits.double(), -1)


def _check_position(entry: dict, logprobs_row: torch.Tensor, token: int, top: int) -> None:
    first = next(iter(entry))
    assert first == token  # the actual token comes first
    assert entry[token].logprob == pytest.approx(float(logprobs_row[token]), abs=1e-4)
    # rank = 1 + tokens more likely (near-ties of a random model may round either way)
    value = logprobs_row[token]
    assert int((logprobs_row > value + 1e-5).sum()) + 1 <= entry[token].rank
    assert entry[token].rank <= int((logprobs_row > value - 1e-5).sum()) + 1
    alternatives = [t for t, lp in entry.items() if t != token or lp.rank <= top]
    assert len(alternatives) == top
    kth = float(torch.topk(logprobs_row, top).values[-1]) if top else 0.0
    for alt in alternatives:  # the top-k (up to near-ties of a random model)
        assert entry[alt].logprob == pytest.approx(float(logprobs_row[alt]), abs=1e-4)
        assert float(logprobs_row[alt]) >= kth - 1e-4
        assert 1 <= entry[alt].rank <= top


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="default"),
        pytest.param({"max_num_batched_tokens": 8, "block_size": 4}, id="chunked-prefill-8"),
    ],
)
def test_prompt_and_output_logprobs_match_transformers(tiny_model_dir: Path, config) -> None:
    prompts = mixed_prompts(3)
    llm = LLM(str(tiny_model_dir), **config)
    params = SamplingParams(max_tokens=5, logprobs=2, prompt_logprobs=3, ignore_eos=True)
    for prompt, out in zip(prompts, llm.generate(prompts, params), strict=True):
        full = tuple(prompt + out.token_ids)
        reference = _hf_logprobs(str(tiny_model_dir), full)
        assert out.prompt_logprobs is not None and out.logprobs is not None
        assert out.prompt_logprobs[0] is None
        assert len(out.prompt_logprobs) == len(prompt)
        for p in range(1, len(prompt)):
            _check_position(out.prompt_logprobs[p], reference[p - 1], prompt[p], 3)
        assert len(out.logprobs) == len(out.token_ids)
        for i, token in enumerate(out.token_ids):
            _check_position(out.logprobs[i], reference[len(prompt) - 1 + i], token, 2)


def test_prompt_logprobs_ignore_the_prefix_cache(tiny_model_dir: Path) -> None:
    prompt = mixed_prompts(2, seed=5)[1][:40]
    llm = LLM(str(tiny_model_dir), block_size=16)
    plain = SamplingParams(max_tokens=2)
    scored = SamplingParams(max_tokens=2, prompt_logprobs=0)
    llm.generate([prompt], plain)  # fills the cache with the prompt's blocks
    out = llm.generate([prompt], scored)[0]
    assert out.num_cached_tokens == 0
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == len(prompt)
    assert all(len(entry) == 1 for entry in out.prompt_logprobs[1:])  # no alternatives asked
    again = llm.generate([prompt], plain)[0]
    assert again.num_cached_tokens >= 32  # the cache still serves everyone else


def test_logprobs_turn_speculation_off_for_that_request(tiny_model_dir: Path) -> None:
    llm = LLM(str(tiny_model_dir), num_speculative_tokens=4)
    prompt = [5, 6, 7, 8] * 6
    out = llm.generate([prompt], SamplingParams(max_tokens=8, logprobs=1, ignore_eos=True))[0]
    assert out.logprobs is not None and len(out.logprobs) == 8
    assert llm.engine.stats().spec_draft_tokens_total == 0


def test_no_logprobs_unless_asked(tiny_model_dir: Path) -> None:
    out = LLM(str(tiny_model_dir)).generate([[1, 2, 3]], SamplingParams(max_tokens=2))[0]
    assert out.logprobs is None and out.prompt_logprobs is None


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
@pytest.mark.parametrize("value", [-1, 21, 1.5, True])
def test_out_of_range_counts_are_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**{field: value})
