from collections import Counter

import pytest

from latlab.errors import ConfigError
from latlab.gateway.routing import LeastLoad, PrefixAware, RoundRobin, make_router
from latlab.gateway.upstreams import Upstream


def ups(n: int) -> list[Upstream]:
    return [Upstream(f"http://127.0.0.1:{9000 + i}") for i in range(n)]


def test_round_robin_takes_turns():
    upstreams, router = ups(3), RoundRobin()
    picks = [router.choose(upstreams, None)[0] for _ in range(6)]
    assert picks == upstreams * 2


def test_least_load_prefers_fewest_requests_then_tokens_and_rotates_ties():
    a, b, c = ups(3)
    router = LeastLoad()
    a.outstanding, b.outstanding, c.outstanding = 2, 1, 1
    b.outstanding_tokens, c.outstanding_tokens = 500, 100
    assert router.choose([a, b, c], None)[0] is c
    for u in (a, b, c):
        u.outstanding = u.outstanding_tokens = 0
    picks = set()
    for _ in range(3):  # a burst of equal scores: each pick is counted before the next
        up, _ = router.choose([a, b, c], None)
        up.begin(10)
        picks.add(up.url)
    assert len(picks) == 3


def test_prefix_goes_home_while_under_the_bound_and_spills_over_it():
    upstreams = ups(2)
    router = PrefixAware(upstreams, load_factor=1.25)
    home, how = router.choose(upstreams, "key-1")
    assert how == "home"
    assert router.choose(upstreams, "key-1")[0] is home  # stable
    home.outstanding = 3  # total 3 (+1 new): cap = ceil(1.25 * 4 / 2) = 3: home is full
    other, how = router.choose(upstreams, "key-1")
    assert other is not home and how == "spill"
    assert router.choose(upstreams, None)[1] == "fallback"


def test_ejecting_an_upstream_does_not_move_other_keys():
    upstreams = ups(3)
    router = PrefixAware(upstreams)
    keys = [f"prefix-{i}" for i in range(200)]
    before = {k: router.choose(upstreams, k)[0] for k in keys}
    gone = upstreams[0]
    remaining = upstreams[1:]
    after = {k: router.choose(remaining, k)[0] for k in keys}
    moved = [k for k in keys if before[k] is not gone and after[k] is not before[k]]
    assert moved == []
    assert len({before[k].url for k in keys}) == 3  # keys spread over every upstream


def test_one_hot_prefix_cannot_take_more_than_the_bound():
    upstreams = ups(2)
    router = PrefixAware(upstreams, load_factor=1.25)
    in_flight = []
    for i in range(40):  # 80% of requests share one prefix; all stay in flight
        up, _ = router.choose(upstreams, "hot" if i % 5 else f"cold-{i}")
        up.begin(1)
        in_flight.append(up.url)
    counts = Counter(in_flight)
    assert max(counts.values()) <= 1.25 * 40 / 2 + 1


def test_make_router_refuses_unknown_policies_and_bad_factors():
    assert make_router("round-robin", ups(1), load_factor=1.25).name == "round-robin"
    with pytest.raises(ConfigError, match="choose one of"):
        make_router("random", ups(1), load_factor=1.25)
    with pytest.raises(ConfigError, match=r"at least 1\.0"):
        make_router("prefix", ups(1), load_factor=0.5)


def test_upstream_urls_are_named_without_v1_and_https_gets_tls():
    assert Upstream("http://h:8000/v1/").url == "http://h:8000"
    assert Upstream("http://h:8000/api/v1").path("/completions") == "/api/v1/completions"
    secure = Upstream("https://h/v1")
    assert (secure.url, secure.port, secure.pool.host_header) == ("https://h", 443, "h")
    assert secure.tls is not None and secure.tls.check_hostname
    assert Upstream("http://h:8000").tls is None
    with pytest.raises(ConfigError, match="http://HOST:PORT or https://"):
        Upstream("h:8000")
