"""The probe's own /metrics: fine buckets with the SLO thresholds as exact edges."""

import httpx

from latlab.metrics import RequestRecord
from latlab.watch.exporter import WatchMetrics, fine_buckets
from latlab.watch.server import ServerFigures
from latlab.watch.window import Verdict


def test_fine_buckets_contain_every_threshold():
    edges = fine_buckets(0.3, 0.037)
    assert 0.3 in edges and 0.037 in edges and edges == tuple(sorted(edges))
    per_decade = [e for e in fine_buckets() if 0.1 <= e < 1.0]
    assert len(per_decade) == 8 and fine_buckets()[0] == 0.001 and fine_buckets()[-1] == 100


def test_observe_publish_and_serve():
    m = WatchMetrics("http://h/v1", slo_ttft_s=0.3)
    ok = RequestRecord(send_ns=0, chunk_ns=[200_000_000, 210_000_000, 230_000_000],
                       chunk_tokens=[1, 1, 1], end_ns=230_000_000, output_tokens=3)  # fmt: skip
    bad = RequestRecord(send_ns=0, end_ns=1, error="http_503")
    m.observe([ok, bad], "tiny")
    verdict = Verdict(state="breach", probes=2, failed=1, good=1,
                      client_ms={"ttft": {"mean": 200.0}})  # fmt: skip
    server = ServerFigures(available=True, ms={"ttft": {"mean": 150.0}})
    m.publish(verdict, server, reachable=True)
    url = m.serve("127.0.0.1", 0)
    try:
        text = httpx.get(url).text
    finally:
        m.close()
    assert (
        'latlab_watch_ttft_seconds_bucket{le="0.3",model="tiny",target="http://h/v1"} 1.0' in text
    )
    assert (
        'latlab_watch_probes_total{model="tiny",outcome="error",target="http://h/v1"} 1.0' in text
    )
    assert 'reason="http_503"' in text
    assert 'latlab_watch_slo_ok{target="http://h/v1"} 0.0' in text
    assert 'latlab_watch_slo_attainment{target="http://h/v1"} 0.5' in text
    assert 'latlab_watch_server_gap_seconds{metric="ttft",target="http://h/v1"} 0.05' in text
    assert 'latlab_watch_itl_seconds_count{model="tiny",target="http://h/v1"} 2.0' in text
