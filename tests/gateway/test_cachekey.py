from latlab.gateway.cachekey import CacheControl, cache_key, is_deterministic

BASE = {"model": "m", "prompt": "hello", "max_tokens": 8, "temperature": 0}


def test_every_output_field_changes_the_key():
    key = cache_key("/completions", BASE)
    for change in ({"prompt": "hello!"}, {"max_tokens": 9}, {"temperature": 0.5},
                   {"seed": 1}, {"stop": ["\n"]}, {"logprobs": 2}, {"model": "other"},
                   {"stream": True}, {"some_vllm_extension": 1}):  # fmt: skip
        assert cache_key("/completions", {**BASE, **change}) != key, change


def test_endpoint_and_tenant_are_part_of_the_key():
    key = cache_key("/completions", BASE)
    assert cache_key("/chat/completions", BASE) != key
    assert cache_key("/completions", BASE, tenant="team-a") != key
    assert cache_key("/completions", BASE, tenant="team-a") != cache_key(
        "/completions", BASE, tenant="team-b"
    )


def test_labels_and_field_order_do_not_change_the_key():
    key = cache_key("/completions", BASE)
    assert cache_key("/completions", {**BASE, "user": "alice", "request_id": "r1"}) == key
    assert cache_key("/completions", dict(reversed(list(BASE.items())))) == key


def test_only_greedy_or_seeded_requests_are_deterministic():
    assert is_deterministic({"temperature": 0})
    assert is_deterministic({"temperature": 0.0})
    assert is_deterministic({"temperature": 0.9, "seed": 7})
    assert not is_deterministic({})  # OpenAI's default temperature is 1
    assert not is_deterministic({"temperature": 0.7})
    assert not is_deterministic({"temperature": False})
    assert not is_deterministic({"temperature": 1, "seed": True})


def test_cache_control_directives():
    assert CacheControl.parse(None).may_read and CacheControl.parse("").may_write
    no_store = CacheControl.parse("No-Store")
    assert not no_store.may_read and not no_store.may_write
    no_cache = CacheControl.parse("no-cache")
    assert not no_cache.may_read and no_cache.may_write
    assert CacheControl.parse("private, max-age=30").max_age_s == 30.0
    assert CacheControl.parse("max-age=abc").max_age_s is None
