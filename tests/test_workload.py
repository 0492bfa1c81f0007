"""Prompt sources, length distributions and arrival processes."""

import itertools
import json
import math
import random
import statistics

import pytest

from latlab.errors import ConfigError
from latlab.prompt_words import TAG_WORDS, UNCALIBRATED, Salt, from_tokenizer
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


@pytest.fixture(scope="module")
def words(tokenizer):
    return from_tokenizer(tokenizer)


def salted(req, salt):
    return req.salted(salt.tag(req.request_id, req.salt_words))


def test_synthetic_prompts_have_exact_token_lengths_salted_or_not(tokenizer, words):
    assert words.exact and words.offset == 1  # the bundled tokenizer adds BOS
    salt = Salt(value="run-a", words=words.words)
    spec = WorkloadSpec(input_len="uniform:2:300", output_len="7", num_prompts=30, seed=3)
    for reqs, tagged in ((build_requests(spec, words, salt=salt), True),
                         (build_requests(spec, words), False)):  # fmt: skip
        assert len(reqs) == 30 and len({r.request_id for r in reqs}) == 30
        for r in reqs:
            sent = salted(r, salt) if tagged else r
            assert len(tokenizer.encode(sent.prompt)) == r.prompt_tokens
            assert r.max_tokens == 7
            assert (sent.prompt != r.prompt) is (tagged and r.salt_words > 0)


def test_a_tag_is_unique_per_request_and_per_run_and_reproducible(words):
    a, b = Salt(value="a", words=words.words), Salt(value="b", words=words.words)
    tags = {a.tag(f"c4-{i}") for i in range(5000)}
    assert len(tags) == 5000
    assert a.tag("c1-0") == Salt(value="a", words=words.words).tag("c1-0") != b.tag("c1-0")
    assert len(a.tag("x").split()) == TAG_WORDS and len(a.tag("x", 2).split()) == 2


def test_input_len_below_what_the_target_adds_is_refused(words):
    with pytest.raises(ConfigError, match=r"--input-len 1 leaves no room.*adds 1 token to"):
        build_requests(WorkloadSpec(input_len="1", num_prompts=1), words)


def test_same_seed_same_prompts_other_seed_other_prompts(words):
    a = build_requests(WorkloadSpec(input_len="16", num_prompts=3, seed=1), words)
    b = build_requests(WorkloadSpec(input_len="16", num_prompts=3, seed=1), words)
    c = build_requests(WorkloadSpec(input_len="16", num_prompts=3, seed=2), words)
    assert [r.prompt for r in a] == [r.prompt for r in b] != [r.prompt for r in c]


def test_synthetic_without_tokenizer_uses_words_and_leaves_the_count_to_the_server():
    salt = Salt(value="s", words=UNCALIBRATED.words)
    reqs = build_requests(WorkloadSpec(input_len="12", num_prompts=2), salt=salt)
    assert len(salted(reqs[0], salt).prompt.split()) == 12
    assert reqs[0].prompt_tokens is None and reqs[0].salt_words == TAG_WORDS


def test_shared_prefix_groups_share_exactly_their_salted_prefix(tokenizer, words):
    spec = WorkloadSpec(dataset="shared-prefix", prefix_groups=2, prefix_len=40,
                        input_len="12", num_prompts=6)  # fmt: skip
    salt = Salt(value="one", words=words.words)
    reqs = build_requests(spec, words, salt=salt)
    sent = [tokenizer.encode(salted(r, salt).prompt) for r in reqs]
    assert all(len(ids) == r.prompt_tokens == 52 for ids, r in zip(sent, reqs, strict=True))
    assert sent[0][:40] == sent[2][:40] == sent[4][:40] != sent[1][:40]
    assert sent[1][:40] == sent[3][:40] == sent[5][:40]
    assert sent[0][40] != sent[2][40]  # each request's own tag starts right after the prefix
    other = build_requests(spec, words, salt=Salt(value="two", words=words.words))
    assert tokenizer.encode(other[0].prompt)[1] != sent[0][1]  # another run: another prefix
    with pytest.raises(ConfigError):
        build_requests(WorkloadSpec(dataset="shared-prefix", prefix_groups=0))


def test_jsonl_prompts_messages_and_output_lengths(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [{"prompt": "hello there", "output_len": 5},
            {"messages": [{"role": "user", "content": "hi"}]}, {"text": "plain"}]  # fmt: skip
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    reqs = build_requests(WorkloadSpec(dataset=f"jsonl:{f}", output_len="9"))
    assert [r.prompt for r in reqs] == ["hello there", "hi", "plain"]
    assert [r.max_tokens for r in reqs] == [5, 9, 9]
    assert reqs[1].messages == [{"role": "user", "content": "hi"}]
    salt = Salt(value="v", words=("w",))
    reqs = build_requests(WorkloadSpec(dataset=f"jsonl:{f}"), salt=salt)
    assert salted(reqs[0], salt).prompt == " w w w w w w hello there"
    assert salted(reqs[1], salt).messages == [{"role": "user", "content": "w w w w w w hi"}]
    assert reqs[1].messages == [{"role": "user", "content": "hi"}]  # the dataset is unchanged


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2"):
        build_requests(WorkloadSpec(dataset=f"jsonl:{f}"))
    f.write_text('{"nothing": 1}\n')
    with pytest.raises(ConfigError, match=r":1: needs a non-empty 'prompt'"):
        build_requests(WorkloadSpec(dataset=f"jsonl:{f}"))
    with pytest.raises(ConfigError, match="cannot read dataset file"):
        build_requests(WorkloadSpec(dataset=f"jsonl:{tmp_path / 'missing.jsonl'}"))


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

    def count(text):
        return len(tokenizer.encode(text, add_special_tokens=False))

    reqs = build_requests(WorkloadSpec(dataset=f"sharegpt:{f}"), count_text=count)
    assert [r.prompt for r in reqs] == ["What is a list?"]
    reply = "A list holds items in order."
    assert reqs[0].max_tokens == count(reply) and reqs[0].reply is None
    uncounted = build_requests(WorkloadSpec(dataset=f"sharegpt:{f}"))
    assert uncounted[0].reply == reply  # left for the server to count, never guessed
    f.write_text('{"not": "a list"}')
    with pytest.raises(ConfigError, match="JSON list"):
        build_requests(WorkloadSpec(dataset=f"sharegpt:{f}"))
    f.write_text("[]")
    with pytest.raises(ConfigError, match="no usable prompts"):
        build_requests(WorkloadSpec(dataset=f"sharegpt:{f}"))


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_requests(WorkloadSpec(dataset="csv:x"))


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
