"""SLO evaluation over the probe window: errors count against it, old probes expire."""

from latlab.metrics import SLO, RequestRecord
from latlab.watch.window import ProbeWindow


def _rec(ttft_ms: float | None, error: str | None = None, detail: str | None = None):
    rec = RequestRecord(send_ns=0, end_ns=int((ttft_ms or 1) * 1e6) + 10_000_000)
    if error:
        rec.error, rec.error_detail = error, detail
    else:
        rec.chunk_ns = [int(ttft_ms * 1e6), int(ttft_ms * 1e6) + 5_000_000]
        rec.chunk_tokens, rec.output_tokens = [1, 1], 2
    return rec


def test_no_probe_is_no_data():
    assert ProbeWindow(60, SLO(ttft_ms=100), 99).evaluate(now=0).state == "no_data"


def test_all_good_holds():
    w = ProbeWindow(60, SLO(ttft_ms=100), 99)
    w.add([_rec(50) for _ in range(10)], now=0)
    v = w.evaluate(now=1)
    assert (v.state, v.good, v.probes, v.attainment) == ("ok", 10, 10, 1.0)
    assert v.client_ms["ttft"]["p99"] == 50


def test_one_slow_probe_breaches_p99_and_is_named():
    w = ProbeWindow(60, SLO(ttft_ms=100), 99)
    w.add([_rec(50)] * 9 + [_rec(300)], now=0)
    v = w.evaluate(now=1)
    assert v.state == "breach"
    assert "TTFT p99" in v.reasons[0] and "> SLO 100 ms" in v.reasons[0]
    assert v.reasons[-1] == "9 of 10 probes good (90.0% < 99%)"


def test_p90_tolerates_one_in_ten():
    w = ProbeWindow(60, SLO(ttft_ms=100), 90)
    w.add([_rec(50)] * 9 + [_rec(300)], now=0)
    assert w.evaluate(now=1).state == "ok"


def test_failures_count_against_the_slo_with_their_reason():
    w = ProbeWindow(60, None, 99)
    w.add([_rec(50), _rec(None, "connect_error", "ConnectError: refused")], now=0)
    v = w.evaluate(now=1)
    assert v.state == "breach" and v.errors == {"connect_error": 1}
    assert v.reasons[0] == ("1 of 2 probes failed (connect_error x1); "
                            "last: ConnectError: refused")  # fmt: skip


def test_old_probes_leave_the_window():
    w = ProbeWindow(60, SLO(ttft_ms=100), 99)
    w.add([_rec(500)], now=0)
    w.add([_rec(50)], now=61)
    v = w.evaluate(now=61)
    assert (v.state, v.probes) == ("ok", 1)


def test_certain_breach_stops_a_once_run_early():
    w = ProbeWindow(60, SLO(ttft_ms=100), 99)
    w.add([_rec(50)], now=0)
    assert not w.certain_breach(expected_probes=200)  # 2 bad probes of 200 are allowed
    w.add([_rec(500), _rec(500)], now=1)
    assert not w.certain_breach(expected_probes=200)
    w.add([_rec(500)], now=2)
    assert w.certain_breach(expected_probes=200)
    assert ProbeWindow(60, None, 99).certain_breach(10) is False
