"""Streaming outputs hold their cumulative lists as snapshots sliced when read: every step's
output must still read exactly what an eager copy at that step held, however late it is read.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle

from latlab.engine import LLM, SamplingParams
from latlab.engine.outputs import RequestOutput, Snapshot
from latlab.engine.sequence import Sequence

PROMPTS = ["the quick brown fox", "a b c d e f", "once upon a time"]


def _stream_with_eager_copies(llm: LLM, params: SamplingParams):
    """Every step's outputs, unread, and beside each the values an eager copy of the sequence's
    state held when the output was built (the engine's semantics before snapshots)."""
    engine = llm.engine
    build = engine.output_of
    eager: dict[int, dict] = {}

    def output_of(seq: Sequence, new_token_ids: list[int]) -> RequestOutput:
        out = build(seq, new_token_ids)
        eager[id(out)] = {
            "token_ids": seq.output_token_ids,
            "text": seq.detok.emitted_text,
            "logprobs": list(seq.logprobs) if seq.params.logprobs is not None else None,
            "prompt_logprobs": (
                list(seq.prompt_logprobs) if seq.params.prompt_logprobs is not None else None
            ),
        }
        return out

    engine.output_of = output_of
    try:
        for prompt in PROMPTS:
            engine.add_request(prompt, params)
        outputs = []
        while engine.has_unfinished():
            outputs.extend(engine.step())
    finally:
        del engine.output_of
    return outputs, eager


def test_outputs_read_after_the_run_equal_eager_copies(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=2,
                            prompt_logprobs=1)  # fmt: skip
    outputs, eager = _stream_with_eager_copies(llm, params)
    assert len(outputs) == 12 * len(PROMPTS)
    for out in outputs:  # read only now, after every sequence grew and finished
        want = eager[id(out)]
        assert out.token_ids == want["token_ids"]
        assert out.text == want["text"]
        assert out.logprobs == want["logprobs"]
        assert out.prompt_logprobs == want["prompt_logprobs"]
        assert len(out.logprobs) == len(out.token_ids)


def test_streamed_deltas_add_up_to_each_steps_cumulative_fields(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    stop_free = SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True)
    outputs, _ = _stream_with_eager_copies(llm, stop_free)
    text = [o for o in outputs if o.request_id == outputs[0].request_id][-1].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    params = SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True, stop=[stop])
    outputs, eager = _stream_with_eager_copies(llm, params)
    ids: dict[str, list[int]] = {}
    texts: dict[str, str] = {}
    for out in outputs:
        ids[out.request_id] = ids.get(out.request_id, []) + out.new_token_ids
        texts[out.request_id] = texts.get(out.request_id, "") + out.new_text
        assert out.token_ids == ids[out.request_id] == eager[id(out)]["token_ids"]
        assert texts[out.request_id].startswith(out.text)  # text may hold a stop string back
        if out.finished:
            assert out.text == texts[out.request_id]
    assert any(o.finish_reason == "stop" for o in outputs)


def test_each_output_owns_its_lists(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=1)
    outputs, _ = _stream_with_eager_copies(llm, params)
    first, later = outputs[0], [o for o in outputs if o.request_id == outputs[0].request_id][-1]
    assert first.token_ids is first.token_ids  # sliced once, then kept
    kept = list(later.token_ids)
    first.token_ids.append(-1)
    first.logprobs.clear()
    assert later.token_ids == kept and len(later.logprobs) == len(kept)


def test_outputs_compare_copy_and_pickle_as_plain_ones(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, logprobs=1)
    outputs, eager = _stream_with_eager_copies(llm, params)
    for out in outputs:
        want = eager[id(out)]
        plain = dataclasses.replace(out, token_ids=want["token_ids"], logprobs=want["logprobs"])
        assert type(plain) is RequestOutput and plain == out and repr(plain) == repr(out)
        assert pickle.loads(pickle.dumps(out)) == out == copy.deepcopy(out)


def _plain(**changes) -> RequestOutput:
    fields = dict(request_id="r", prompt=None, prompt_token_ids=[1], text="ab", token_ids=[2, 3],
                  new_text="b", new_token_ids=[3], finished=False, finish_reason=None,
                  num_cached_tokens=0)  # fmt: skip
    return RequestOutput(**{**fields, **changes})


def test_request_output_built_from_lists_behaves_as_the_dataclass():
    out = _plain()
    assert out.token_ids == [2, 3] and out.logprobs is None and out.prompt_logprobs is None
    out.token_ids = [4]
    assert out.token_ids == [4]
    assert [f.name for f in dataclasses.fields(RequestOutput)][4] == "token_ids"
    assert RequestOutput("r", None, [1], "ab", [2, 3], "b", [3], False, None, 0) == _plain()
    del out.token_ids
    assert not hasattr(out, "token_ids")


def test_snapshot_is_the_slice_at_build_time():
    source = [0, 1, 2]
    out = _plain(token_ids=Snapshot((source, 1, 3)))
    source.extend([3, 4])  # the engine's lists only grow at their end
    assert out.token_ids == [1, 2]
    assert out == _plain(token_ids=[1, 2])
