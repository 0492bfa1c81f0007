"""Every metric definition against hand-computed cases (docs/metrics.md)."""

import asyncio
import time

import pytest

from latlab.metrics import (
    SLO,
    RequestRecord,
    Stats,
    distribute_tokens,
    measure,
    percentile,
    summarize,
)

MS = 1_000_000


def rec(chunks_ms, tokens, end_ms, send_ms=0.0, intended_ms=None, error=None, **kw):
    return RequestRecord(
        request_id=kw.pop("rid", "r"),
        intended_send_ns=None if intended_ms is None else int(intended_ms * MS),
        send_ns=int(send_ms * MS),
        chunk_ns=[int(c * MS) for c in chunks_ms],
        chunk_tokens=list(tokens),
        end_ns=int(end_ms * MS),
        output_tokens=sum(tokens),
        error=error,
        **kw,
    )


def test_ttft_gap_itl_tpot_e2e_with_multi_token_chunks():
    # chunks at 100, 110, 130 ms carrying 1, 2, 1 tokens; last byte at 135 ms
    r = rec([100, 110, 130], [1, 2, 1], 135)
    assert r.ttft_ns == 100 * MS
    assert r.chunk_gaps_ns() == [10 * MS, 20 * MS]
    # the 10 ms gap is shared by 2 tokens, the 20 ms gap by 1
    assert r.itl_ns() == [5 * MS, 5 * MS, 20 * MS]
    assert r.tpot_ns == pytest.approx((135 - 100) * MS / 3)
    assert r.e2e_ns == 135 * MS


def test_extra_tokens_in_first_chunk_add_no_itl_sample():
    r = rec([50, 60], [3, 1], 60)
    assert r.itl_ns() == [10 * MS]
    assert r.tpot_ns == pytest.approx(10 * MS / 3)


def test_tpot_undefined_for_one_token_and_slo_ignores_it():
    r = rec([40], [1], 41)
    assert r.tpot_ns is None
    assert r.itl_ns() == []
    assert SLO(ttft_ms=50, tpot_ms=1).met_by(r)
    assert not SLO(ttft_ms=39).met_by(r)


def test_open_loop_latency_starts_at_intended_send_time():
    # scheduled at 0, the client only sent at 5 ms: 5 ms of client queue time count as latency
    r = rec([20, 30], [1, 1], 31, send_ms=5, intended_ms=0)
    assert r.queue_ns == 5 * MS
    assert r.ttft_ns == 20 * MS
    assert r.e2e_ns == 31 * MS


def test_percentiles_match_numpy_linear_interpolation():
    vals = [float(v) for v in range(1, 101)]
    assert percentile(vals, 50) == pytest.approx(50.5)
    assert percentile(vals, 90) == pytest.approx(90.1)
    assert percentile(vals, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    s = Stats.of([4.0, 1.0, 2.0, 3.0])
    assert (s.min, s.max, s.mean, s.p50) == (1.0, 4.0, 2.5, 2.5)
    assert s.std == pytest.approx(1.118033988)  # population std
    assert Stats.of([]).p50 is None


def test_summarize_goodput_counts_failures_as_not_good():
    records = [
        rec([100, 110], [1, 1], 200, rid="a"),  # ttft 100, tpot 100
        rec([300, 310], [1, 1], 320, rid="b"),  # ttft 300 -> misses the TTFT SLO
        rec([50, 60, 70], [1, 2, 1], 400, rid="c"),  # ttft 50, tpot 350/3
        rec([], [], 1000, error="http_500", rid="d"),  # failed: never good
    ]
    s = summarize(records, SLO(ttft_ms=200, tpot_ms=150), duration_s=2.0)
    assert (s.completed, s.failed) == (3, 1)
    assert s.errors == {"http_500": 1}
    assert s.good_requests == 2
    assert s.goodput_rps == pytest.approx(1.0)
    assert s.requests_per_s == pytest.approx(1.5)
    assert s.output_tokens == 2 + 2 + 4
    assert s.output_tokens_per_s == pytest.approx(4.0)
    assert s.tokens_per_chunk == {1: 6, 2: 1}
    assert s.multi_token_chunks == 1
    assert s.ttft_ms.p50 == pytest.approx(100.0)
    assert s.failure_rate == pytest.approx(0.25)


def test_summarize_window_defaults_to_first_send_to_last_byte_and_skips_warmup():
    records = [
        rec([10], [1], 20, send_ms=0),
        rec([1010], [1], 1000 + 500, send_ms=1000),
        rec([5], [1], 5000, warmup=True),
    ]
    s = summarize(records)
    assert s.duration_s == pytest.approx(1.5)
    assert s.completed == 2
    assert s.goodput_rps is None


def test_summary_to_dict_has_the_contract_keys():
    d = summarize([rec([10, 20], [1, 1], 20)]).to_dict()
    for key in ("ttft_ms", "itl_ms", "chunk_gap_ms", "tpot_ms", "e2e_ms"):
        assert set(d[key]) >= {"mean", "std", "min", "max", "p50", "p90", "p95", "p99"}
    for key in ("output_tokens_per_s", "requests_per_s", "goodput_rps", "completed", "failed"):
        assert key in d
    assert d["errors"] == {}
    assert d["tokens_per_chunk"] == {"1": 2}


def test_distribute_tokens_follows_weights_and_gives_every_chunk_one():
    assert distribute_tokens(15, [4, 4, 4, 4, 4]) == [3, 3, 3, 3, 3]
    assert distribute_tokens(4, [1, 3]) == [1, 3]
    assert distribute_tokens(3, [10, 1, 1]) == [1, 1, 1]
    assert distribute_tokens(2, [1, 1, 1]) == [1, 1, 0]
    assert sum(distribute_tokens(101, [7, 3, 9, 1])) == 101
    assert distribute_tokens(5, []) == []


def test_measure_sync_yields_items_unchanged_and_exposes_the_record():
    def gen():
        time.sleep(0.02)
        yield "a"
        yield ""  # carries nothing: not a chunk
        time.sleep(0.01)
        yield [1, 2, 3]  # three token ids in one chunk

    m = measure(gen(), request_id="x")
    assert list(m) == ["a", "", [1, 2, 3]]
    r = m.record
    assert r.request_id == "x"
    assert r.chunk_tokens == [1, 3]
    assert r.output_tokens == 4
    assert r.ttft_ns >= 15 * MS
    assert r.chunk_gaps_ns()[0] >= 8 * MS
    assert r.end_ns >= r.chunk_ns[-1]
    assert r.ok


def test_measure_async_iterator():
    async def agen():
        for tok in ("x", "y"):
            await asyncio.sleep(0.005)
            yield tok

    async def go():
        m = measure(agen())
        return [t async for t in m], m.record

    items, r = asyncio.run(go())
    assert items == ["x", "y"]
    assert len(r.chunk_ns) == 2 and r.ttft_ns >= 4 * MS


def test_measure_records_the_error_and_reraises():
    def broken():
        yield "a"
        raise RuntimeError("boom")

    m = measure(broken())
    with pytest.raises(RuntimeError):
        list(m)
    assert m.record.error == "RuntimeError"
    assert m.record.error_detail == "boom"
    assert summarize([m.record]).errors == {"RuntimeError": 1}


def test_measure_refuses_the_wrong_protocol():
    async def agen():
        yield 1

    with pytest.raises(TypeError):
        iter(measure(agen()))


def test_record_to_dict_round_trips_figures_in_ms():
    d = rec([100, 110], [1, 1], 120, send_ms=0).to_dict()
    assert d["ttft_ms"] == 100.0
    assert d["tpot_ms"] == 20.0
    assert d["e2e_ms"] == 120.0
    assert d["ok"] is True and d["num_chunks"] == 2


def test_record_from_dict_restores_what_to_dict_wrote():
    original = rec([100, 110, 130], [1, 2, 1], 140, send_ms=5, intended_ms=2, prompt_tokens=7,
                   prompt_tokens_requested=8, cached_tokens=3,
                   output_tokens_source="usage")  # fmt: skip
    back = RequestRecord.from_dict(original.to_dict())
    assert back == original
    failed = RequestRecord.from_dict({**rec([], [], 9, error="http_500").to_dict(), "new": 1})
    assert failed.error == "http_500" and not failed.ok
