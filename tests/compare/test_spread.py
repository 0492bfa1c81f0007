"""--repeats figures: spread between repeats, pooled intervals, requests needed for a width."""

from __future__ import annotations

import random

import pytest

from latlab.compare.spread import spreads
from latlab.metrics import RequestRecord

MS = 1_000_000


def level(ttfts_ms: list[float], repeat: int) -> dict:
    records, t = [], 0
    for i, ttft in enumerate(ttfts_ms):
        start = t + i * 100 * MS
        chunks = [start + int(ttft * MS) + j * 10 * MS for j in range(4)]
        rec = RequestRecord(request_id=str(i), send_ns=start, chunk_ns=chunks,
                            chunk_tokens=[1] * 4, end_ns=chunks[-1], output_tokens=4)  # fmt: skip
        records.append(rec.to_dict())
    return {"load": {"concurrency": 1, "repeat": repeat}, "summary": {}, "records": records}


def result(per_repeat: list[list[float]]) -> dict:
    return {"schema_version": "latlab.bench/1", "config": {},
            "levels": [level(v, r) for r, v in enumerate(per_repeat)]}  # fmt: skip


def ttfts(n: int, seed: int, shift: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    return [50 + shift + rng.gauss(0, 5) for _ in range(n)]


def by_name(rows):
    return {s.figure.name: s for s in rows}


def test_per_repeat_values_cv_and_pooled_interval():
    rows = by_name(spreads(result([ttfts(200, 1), ttfts(200, 2, shift=10)]), ("ttft_p50",)))
    s = rows["ttft_p50"]
    assert s.per_repeat[1] - s.per_repeat[0] == pytest.approx(10, abs=2)
    assert s.cv_pct == pytest.approx(100 * 7.07 / 55, rel=0.25)
    assert s.pooled.low < s.per_repeat[0] + 1 and s.pooled.high > s.per_repeat[1] - 1
    assert s.requests == 400


def test_requests_for_a_width_scale_as_one_over_root_n_and_respect_the_tail():
    s = by_name(spreads(result([ttfts(400, 3)]), ("ttft_p50",)))["ttft_p50"]
    now = 100 * s.sampling.half_width / s.sampling.estimate
    assert s.requests_for(now / 2) == pytest.approx(4 * 400, rel=0.02)
    p99 = by_name(spreads(result([ttfts(100, 4)]), ("ttft_p99",)))["ttft_p99"]
    assert not p99.sampling.reliable and p99.requests_for(5) is None  # 1 request above p99
    enough = by_name(spreads(result([ttfts(600, 5)]), ("ttft_p99",)))["ttft_p99"]
    assert enough.requests_for(50) == 500  # wide target: the tail minimum decides
