"""Reading /metrics: histograms summed over label sets, deltas across restarts, quantiles."""

import pytest

from latlab.errors import TargetError
from latlab.monitor.scrape import Histogram, Scrape, fetch

TEXT = """# HELP t_seconds TTFT
# TYPE t_seconds histogram
t_seconds_bucket{engine="0",le="0.1"} 2.0
t_seconds_bucket{engine="0",le="0.5"} 6.0
t_seconds_bucket{engine="0",le="+Inf"} 8.0
t_seconds_count{engine="0"} 8.0
t_seconds_sum{engine="0"} 3.2
t_seconds_bucket{engine="1",le="0.1"} 2.0
t_seconds_bucket{engine="1",le="0.5"} 2.0
t_seconds_bucket{engine="1",le="+Inf"} 2.0
t_seconds_count{engine="1"} 2.0
t_seconds_sum{engine="1"} 0.1
# TYPE reqs counter
reqs_total{code="200"} 5.0
"""


def test_histograms_are_summed_over_engines():
    h = Scrape.parse(TEXT).histogram("t_seconds")
    assert h.edges == (0.1, 0.5, float("inf")) and h.counts == (4, 8, 10)
    assert (h.total, h.sum) == (10, pytest.approx(3.3))
    assert Scrape.parse(TEXT).edges("t_seconds") == (0.1, 0.5)
    assert Scrape.parse(TEXT).total("reqs_total") == 5


@pytest.mark.parametrize(("q", "value"), [(0.2, 0.05), (0.4, 0.1), (0.6, 0.3), (0.95, 0.5)])
def test_quantile_interpolates_like_histogram_quantile(q, value):
    # 4 at or under 0.1, 4 more under 0.5, 2 above: PromQL returns the last finite edge there.
    assert Scrape.parse(TEXT).histogram("t_seconds").quantile(q) == pytest.approx(value)


def test_minus_and_counter_reset():
    before = Histogram(edges=(0.1, float("inf")), counts=(1, 2), total=2, sum=0.3)
    after = Histogram(edges=(0.1, float("inf")), counts=(3, 5), total=5, sum=1.0)
    delta = after.minus(before)
    assert (delta.counts, delta.total, delta.sum) == ((2, 3), 3, pytest.approx(0.7))
    restarted = Histogram(edges=(0.1, float("inf")), counts=(1, 1), total=1, sum=0.05)
    assert restarted.minus(after) is restarted  # a reset: everything since is new
    assert Histogram(edges=(1.0,), counts=(0,), total=0, sum=0).quantile(0.5) is None


def test_fetch_errors_are_one_line(latlab_server_url):
    with pytest.raises(TargetError, match="HTTP 404"):
        fetch(f"{latlab_server_url}/no-metrics-here")
    with pytest.raises(TargetError, match="cannot read"):
        fetch("http://127.0.0.1:1/metrics", timeout_s=2)
    assert fetch(f"{latlab_server_url}/metrics").histogram("latlab:time_to_first_token_seconds")


def test_garbage_is_not_a_scrape():
    with pytest.raises(TargetError, match="not a Prometheus text exposition"):
        Scrape.parse('metric{le="0.1" 1\n')
