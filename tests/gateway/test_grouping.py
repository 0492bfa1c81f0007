from latlab.gateway.grouping import group_by_prefix, prefix_key, prompt_text


def test_prompt_text_of_each_request_shape():
    assert prompt_text({"prompt": "abc"}) == "abc"
    assert prompt_text({"prompt": ["abc"]}) == "abc"
    assert prompt_text({"prompt": [1, 2, 3]}) == [1, 2, 3]
    assert prompt_text({"prompt": ["a", "b"]}) is None  # a batch has no single prefix
    parts = [{"type": "text", "text": "U"}]
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": parts}]
    chat = prompt_text({"messages": messages})
    assert chat == "system\x1fS\x1euser\x1fU\x1e"


def test_prefix_key_depends_only_on_the_leading_block():
    a = prefix_key("x" * 10 + "tail one", block=10)
    assert a == prefix_key("x" * 10 + "another tail", block=10)
    assert a != prefix_key("y" + "x" * 9 + "tail one", block=10)
    assert prefix_key("short", block=10) is None
    assert prefix_key(list(range(20)), block=16) == prefix_key([*range(16), 99], block=16)
    assert prefix_key(None, block=4) is None


def test_group_by_prefix_keeps_first_appearance_order_and_short_prompts_alone():
    items = ["AAAA1", "BBBB1", "AAAA2", "x", "BBBB2", "y"]
    groups = group_by_prefix(items, lambda s: s, block=4)
    assert groups == [["AAAA1", "AAAA2"], ["BBBB1", "BBBB2"], ["x"], ["y"]]
