"""Several client processes sharing one level, on one clock."""

import pytest

from latlab.bench import BenchConfig, CallableTarget, OpenAITarget, run_bench
from latlab.bench.workers import _proportional, split
from latlab.errors import ConfigError
from latlab.testing import StubServer

from .fake_targets import make_stream


def test_split_and_proportional_shares():
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 2) == [1, 1]
    assert _proportional(11, [3, 2]) == [7, 4]
    assert sum(_proportional(100, [86, 85, 85])) == 100


def test_closed_and_open_loop_levels_across_two_workers():
    with StubServer(ttft_s=0.02, itl_s=0.002, chunks=4) as url:
        closed = run_bench(BenchConfig(concurrency=[3], num_requests=9, warmup=1, workers=2,
                                       input_len="4", output_len="4"),
                           OpenAITarget(url), False)  # fmt: skip
        opened = run_bench(BenchConfig(rate=[200.0], num_requests=10, warmup=0, workers=2,
                                       input_len="4", output_len="4"),
                           OpenAITarget(url), False)  # fmt: skip
    lv = closed.levels[0]
    assert lv.load == {"concurrency": 3}
    assert (lv.summary.completed, lv.summary.failed) == (9, 0)
    assert {r.request_id.split("-")[0] for r in lv.records} == {"w0", "w1"}
    assert abs(lv.summary.ttft_ms.p50 - 20.0) < 15.0
    assert lv.client.cpu_s > 0
    lv = opened.levels[0]
    assert lv.summary.completed == 10
    intended = sorted(r.intended_send_ns for r in lv.records)
    assert intended[-1] - intended[0] < 1e9  # one shared schedule, not two
    assert lv.summary.queue_ms.count == 10


def test_workers_need_an_http_target():
    with pytest.raises(ConfigError, match="--url"):
        run_bench(BenchConfig(num_requests=2, workers=2), CallableTarget(make_stream()), False)
    with pytest.raises(ConfigError, match="--workers"):
        BenchConfig(workers=0)
