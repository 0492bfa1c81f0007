"""LLM.generate asks the engine for final outputs only: the same finished outputs as stepping the
engine and reading every step's, and no output built for the steps in between."""

from __future__ import annotations

from latlab.engine import LLM, SamplingParams
from latlab.engine.outputs import RequestOutput

PROMPTS = ["the quick brown fox", "a b c d e f", "once upon a time"]


def _stepped(llm: LLM, params: SamplingParams) -> list[RequestOutput]:
    """Each prompt's finished output with every step's output built, and the new_text of all
    its steps joined (the streaming view)."""
    engine = llm.engine
    ids = [engine.add_request(prompt, params) for prompt in PROMPTS]
    finished: dict[str, RequestOutput] = {}
    streamed = {request_id: "" for request_id in ids}
    while engine.has_unfinished():
        for out in engine.step():
            streamed[out.request_id] += out.new_text
            if out.finished:
                finished[out.request_id] = out
    for request_id in ids:
        assert streamed[request_id] == finished[request_id].text
    return [finished[request_id] for request_id in ids]


def _generated(llm: LLM, params: SamplingParams) -> tuple[list[RequestOutput], int]:
    """LLM.generate's outputs, and how many outputs its engine steps built."""
    engine, seen = llm.engine, []
    step = engine.step

    def counting_step() -> list[RequestOutput]:
        outputs = step()
        seen.extend(outputs)
        return outputs

    engine.step = counting_step
    try:
        outputs = llm.generate(PROMPTS, params)
    finally:
        del engine.step
    assert all(out.finished for out in seen)
    return outputs, len(seen)


def _same(a: RequestOutput, b: RequestOutput) -> None:
    assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason)
    assert a.prompt_token_ids == b.prompt_token_ids
    assert a.logprobs == b.logprobs


def test_generate_builds_final_outputs_only_and_they_match_stepping(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=2)
    stepped = _stepped(llm, params)
    generated, built = _generated(llm, params)
    assert built == len(PROMPTS)  # one output a request, where stepping built one a step
    for a, b in zip(generated, stepped, strict=True):
        _same(a, b)
        assert a.new_text == a.text and a.new_token_ids == a.token_ids  # nothing taken before


def test_final_outputs_trim_stop_strings_as_streaming_does(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    free = _stepped(llm, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    text = free[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # a stop string the first prompt reaches
    assert stop.strip(), text
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop])
    stepped = _stepped(llm, params)
    generated, _ = _generated(llm, params)
    assert stepped[0].finish_reason == "stop" and stop not in stepped[0].text
    for a, b in zip(generated, stepped, strict=True):
        _same(a, b)


def test_final_text_decoded_at_the_end_matches_streaming(tiny_model_dir):
    """Without stop strings, LLM.generate decodes a request's tokens once it finishes: the same
    text as step-by-step decoding, whether it ends by length or by a stop token (not text),
    including one that came before min_tokens (text then)."""
    llm = LLM(str(tiny_model_dir))
    free = _stepped(llm, SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    stop_token = free[0].token_ids[5]  # the first prompt reaches it at its sixth token
    by_token = SamplingParams(max_tokens=16, temperature=0.0, stop_token_ids=[stop_token])
    for params in (
        SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True),
        by_token,
        SamplingParams(max_tokens=16, temperature=0.0, stop_token_ids=[stop_token], min_tokens=8),
    ):
        stepped = _stepped(llm, params)
        generated, _ = _generated(llm, params)
        for a, b in zip(generated, stepped, strict=True):
            _same(a, b)
        if params is by_token:
            assert stepped[0].finish_reason == "stop" and len(stepped[0].token_ids) <= 6
