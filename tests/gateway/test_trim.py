from pathlib import Path

import pytest

import latlab
from latlab.gateway.trim import (
    TEMPLATE_TOKENS_PER_MESSAGE,
    EstimatedCounter,
    TokenizerCounter,
    TrimError,
    find_tokenizer_file,
    load_counter,
    trim_messages,
    trim_prompt,
    trim_token_ids,
)

BUNDLED = Path(latlab.__file__).parent / "assets" / "tiny-llama"
EST = EstimatedCounter()


def chat(*contents: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in contents]


def cost(text: str) -> int:
    return EST.count(text) + TEMPLATE_TOKENS_PER_MESSAGE


def test_nothing_removed_within_budget():
    messages = chat(("system", "be brief"), ("user", "hi"))
    out = trim_messages(messages, 100, EST)
    assert out.value == messages and out.removed_tokens == 0


def test_keeps_system_and_newest_turns_and_reports_what_it_removed():
    messages = chat(("system", "S" * 40), ("user", "old question " * 10),
                    ("assistant", "old answer " * 10), ("user", "new question"))  # fmt: skip
    budget = cost("S" * 40) + cost("new question") + 2
    out = trim_messages(messages, budget, EST)
    assert [m["content"] for m in out.value] == ["S" * 40, "new question"]
    total = sum(cost(m["content"]) for m in messages)
    assert out.removed_tokens == total - out.kept_tokens > 0
    assert out.kept_tokens <= budget and out.counted_by.startswith("estimate")


def test_kept_history_never_starts_with_an_orphaned_answer():
    messages = chat(("user", "q1 " * 30), ("assistant", "a1"), ("tool", "t"), ("user", "q2"))
    budget = cost("a1") + cost("t") + cost("q2")
    out = trim_messages(messages, budget, EST)
    assert [m["role"] for m in out.value] == ["user"]


def test_a_newest_message_too_long_alone_keeps_its_end():
    messages = chat(("system", "sys"), ("user", "x" * 400 + "THE END"))
    out = trim_messages(messages, 40, EST)
    assert out.value[0]["content"] == "sys"
    assert out.value[1]["content"].endswith("THE END") and out.kept_tokens <= 40


def test_system_message_alone_over_budget_is_refused():
    with pytest.raises(TrimError, match="raise the budget"):
        trim_messages(chat(("system", "S" * 400), ("user", "hi")), 20, EST)
    with pytest.raises(TrimError):
        trim_messages(chat(("user", "hi")), 0, EST)


def test_prompt_keeps_its_end_counted_with_the_real_tokenizer():
    counter = TokenizerCounter(BUNDLED / "tokenizer.json")
    prompt = "def f(x):\n    return x + 1\n" * 20
    out = trim_prompt(prompt, 16, counter)
    assert counter.count(out.value) <= 16 and prompt.endswith(out.value)
    assert out.removed_tokens == counter.count(prompt) - out.kept_tokens > 0
    assert out.counted_by.startswith("tokenizer:") and counter.exact


def test_token_ids_keep_the_last_budget():
    assert trim_token_ids(list(range(10)), 3) == [7, 8, 9]
    assert trim_token_ids([1, 2], 5) == [1, 2]


def test_counter_is_the_models_tokenizer_when_found_else_a_stated_estimate(tmp_path):
    assert find_tokenizer_file(str(BUNDLED)) == BUNDLED / "tokenizer.json"
    assert load_counter(str(BUNDLED)).exact
    assert not load_counter("no-such-org/no-such-model").exact
    assert not load_counter(None).exact
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    assert not load_counter(str(tmp_path)).exact
