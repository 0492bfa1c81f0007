import pytest

from latlab.errors import ConfigError
from latlab.watch.config import WatchConfig


def test_defaults_are_bounded_and_have_no_slo():
    c = WatchConfig(url="http://h/v1")
    assert (c.concurrency, c.requests_per_cycle, c.interval_s, c.max_rate) == (1, 1, 10.0, 1.0)
    assert c.slo is None and c.expected_probes == 30


@pytest.mark.parametrize(
    ("kw", "why"),
    [({"requests_per_cycle": 4, "interval_s": 1.0}, "4 requests/s, above --max-rate 1"),
     ({"concurrency": 9}, "must not load it"), ({"concurrency": 0}, "--concurrency"),
     ({"window_s": 5.0}, "at least one --interval"), ({"percentile": 100.0}, "--slo-percentile"),
     ({"slo_ttft_ms": -1.0}, "--slo-ttft-ms"), ({"api": "embeddings"}, "--api"),
     ({"interval_s": 0.0}, "--interval"), ({"max_tokens": "lots"}, "--max-tokens"),
     ({"requests_per_cycle": 65, "max_rate": 100.0}, "--requests-per-cycle")],
)  # fmt: skip
def test_bad_config_says_what_to_change(kw, why):
    with pytest.raises(ConfigError, match=why):
        WatchConfig(url="http://h/v1", **kw)


def test_slo_object():
    c = WatchConfig(url="http://h/v1", slo_ttft_ms=500, slo_tpot_ms=50)
    assert (c.slo.ttft_ms, c.slo.tpot_ms, c.slo.e2e_ms) == (500, 50, None)
