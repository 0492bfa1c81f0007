"""Prompt sources, length distributions and arrival processes."""

import itertools
import json
import math
import random
import statistics

import pytest

from latlab.errors import ConfigError
from latlab.workload import LengthDist, WorkloadSpec, arrival_offsets_s, build_requests


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    from latlab.assets import bundled_model_path

    return transformers.AutoTokenizer.from_pretrained(str(bundled_model_path()))


def test_length_distributions_parse_and_sample_in_range():
    rng = random.Random(0)
    assert LengthDist.parse("64").sample(rng) == 64
    u = LengthDist.parse("uniform:10:20")
    assert all(10 <= u.sample(rng) <= 20 for _ in range(200))
    n = LengthDist.parse("normal:100:10")
    vals = [n.sample(rng) for _ in range(2000)]
    assert 97 < statistics.mean(vals) < 103 and min(vals) >= 1
    assert LengthDist.parse("normal:2:50").sample(rng) >= 1  # clipped at one token


@pytest.mark.parametrize("bad", ["", "abc", "0", "uniform:5", "uniform:9:3", "poisson:3:3", "-4"])
def test_bad_length_specs_name_the_flag(bad):
    with pytest.raises(ConfigError, match="--input-len"):
        LengthDist.parse(bad, "--input-len")


def test_synthetic_prompts_have_exact_token_lengths(tokenizer):
    spec = WorkloadSpec(input_len="uniform:1:300", output_len="7", num_prompts=30, seed=3)
    reqs = build_requests(spec, tokenizer)
    assert len(reqs) == 30
    for r in reqs:
        assert len(tokenizer.encode(r.prompt, add_special_tokens=False)) == r.prompt_tokens
        assert r.max_tokens == 7
    assert len({r.request_id for r in reqs}) == 30


def test_same_seed_same_prompts_other_seed_other_prompts(tokenizer):
    a = build_requests(WorkloadSpec(input_len="16", num_prompts=3, seed=1), tokenizer)
    b = build_requests(WorkloadSpec(input_len="16", num_prompts=3, seed=1), tokenizer)
    c = build_requests(WorkloadSpec(input_len="16", num_prompts=3, seed=2), tokenizer)
    assert [r.prompt for r in a] == [r.prompt for r in b] != [r.prompt for r in c]


def test_synthetic_without_tokenizer_uses_words_and_leaves_the_count_to_the_server():
    reqs = build_requests(WorkloadSpec(input_len="12", num_prompts=2), None)
    assert len(reqs[0].prompt.split()) == 12
    assert reqs[0].prompt_tokens is None


def test_shared_prefix_groups_share_their_prefix(tokenizer):
    spec = WorkloadSpec(dataset="shared-prefix", prefix_groups=2, prefix_len=40,
                        input_len="5", num_prompts=6)  # fmt: skip
    reqs = build_requests(spec, tokenizer)
    heads = [r.prompt[:60] for r in reqs]
    assert heads[0] == heads[2] == heads[4] != heads[1]
    assert heads[1] == heads[3] == heads[5]
    assert all(r.prompt_tokens >= 45 for r in reqs)
    with pytest.raises(ConfigError):
        build_requests(WorkloadSpec(dataset="shared-prefix", prefix_groups=0), None)


def test_jsonl_prompts_messages_and_output_lengths(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [{"prompt": "hello there", "output_len": 5},
            {"messages": [{"role": "user", "content": "hi"}]}, {"text": "plain"}]  # fmt: skip
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    reqs = build_requests(WorkloadSpec(dataset=f"jsonl:{f}", output_len="9"), None)
    assert [r.prompt for r in reqs] == ["hello there", "hi", "plain"]
    assert [r.max_tokens for r in reqs] == [5, 9, 9]
    assert reqs[1].messages == [{"role": "user", "content": "hi"}]


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2"):
        build_requests(WorkloadSpec(dataset=f"jsonl:{f}"), None)
    f.write_text('{"nothing": 1}\n')
    with pytest.raises(ConfigError, match=r":1: needs a non-empty 'prompt'"):
        build_requests(WorkloadSpec(dataset=f"jsonl:{f}"), None)
    with pytest.raises(ConfigError, match="cannot read dataset file"):
        build_requests(WorkloadSpec(dataset=f"jsonl:{tmp_path / 'missing.jsonl'}"), None)


def test_sharegpt_first_human_turn_and_reply_length(tmp_path, tokenizer):
    f = tmp_path / "sg.json"
    data = [
        {"conversations": [{"from": "human", "value": "What is a list?"},
                           {"from": "gpt", "value": "A list holds items in order."}]},
        {"conversations": [{"from": "gpt", "value": "skipped: starts with the model"},
                           {"from": "human", "value": "x"}]},
        {"conversations": [{"from": "human", "value": "only one turn"}]},
    ]  # fmt: skip
    f.write_text(json.dumps(data))
    reqs = build_requests(WorkloadSpec(dataset=f"sharegpt:{f}"), tokenizer)
    assert [r.prompt for r in reqs] == ["What is a list?"]
    reply = "A list holds items in order."
    assert reqs[0].max_tokens == len(tokenizer.encode(reply, add_special_tokens=False))
    f.write_text('{"not": "a list"}')
    with pytest.raises(ConfigError, match="JSON list"):
        build_requests(WorkloadSpec(dataset=f"sharegpt:{f}"), None)
    f.write_text("[]")
    with pytest.raises(ConfigError, match="no usable prompts"):
        build_requests(WorkloadSpec(dataset=f"sharegpt:{f}"), None)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_requests(WorkloadSpec(dataset="csv:x"), None)


def test_poisson_arrivals_have_the_asked_rate_and_are_seeded():
    offs = arrival_offsets_s(50.0, num_requests=4000, seed=7)
    gaps = [b - a for a, b in itertools.pairwise(offs)]
    assert offs[0] == 0.0 and len(offs) == 4000
    assert statistics.mean(gaps) == pytest.approx(1 / 50, rel=0.05)
    cv = statistics.pstdev(gaps) / statistics.mean(gaps)
    assert cv == pytest.approx(1.0, abs=0.08)  # exponential gaps
    assert offs == arrival_offsets_s(50.0, num_requests=4000, seed=7)
    assert offs != arrival_offsets_s(50.0, num_requests=4000, seed=8)


def test_gamma_burstiness_changes_the_spread_not_the_rate():
    for shape in (0.25, 4.0):
        offs = arrival_offsets_s(20.0, num_requests=4000, burstiness=shape, seed=1)
        gaps = [b - a for a, b in itertools.pairwise(offs)]
        assert statistics.mean(gaps) == pytest.approx(1 / 20, rel=0.08)
        cv = statistics.pstdev(gaps) / statistics.mean(gaps)
        assert cv == pytest.approx(1 / math.sqrt(shape), rel=0.12)


def test_duration_bounds_arrivals_and_inf_rate_sends_at_once():
    offs = arrival_offsets_s(100.0, duration_s=0.5, seed=0)
    assert all(t < 0.5 for t in offs) and 30 < len(offs) < 80
    assert arrival_offsets_s(math.inf, num_requests=5) == [0.0] * 5
    with pytest.raises(ConfigError):
        arrival_offsets_s(math.inf, duration_s=1.0)
    with pytest.raises(ConfigError):
        arrival_offsets_s(0.0, num_requests=3)
    with pytest.raises(ConfigError):
        arrival_offsets_s(1.0, num_requests=3, burstiness=0)
