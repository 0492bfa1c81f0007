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
    assert lv.summary.ttft_ms.p50 >= 19.0  # the stub waits 20 ms; a loaded machine only adds
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


class _Recorder:
    """A progress sink that keeps every update."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, int, float | None]] = []
        self.levels = 0

    def start_level(self, label, total):
        self.levels += 1

    def update(self, completed, failed, ttft_p50_ms):
        self.updates.append((completed, failed, ttft_p50_ms))

    def end_level(self):
        pass


def test_progress_from_the_workers_arrives_while_the_level_runs():
    sink = _Recorder()
    # 12 requests of ~0.3 s over 2 users per worker: the level lasts ~1 s, and each worker's
    # runner reports at most every 0.2 s
    with StubServer(ttft_s=0.02, itl_s=0.02, chunks=14) as url:
        result = run_bench(BenchConfig(concurrency=[4], num_requests=12, warmup=0, workers=2,
                                       input_len="4", output_len="14"),
                           OpenAITarget(url), sink)  # fmt: skip
    assert sink.levels == 1
    done = [u[0] for u in sink.updates]
    assert len(sink.updates) >= 3  # live updates, not only the final one
    assert min(done) < 12 and done[-1] == 12 == result.levels[0].summary.completed
    assert done == sorted(done)  # counts only grow
    assert all(u[2] is None or 10 < u[2] < 200 for u in sink.updates)


def test_combined_progress_sums_counts_and_weights_ttft():
    from latlab.bench.workers import _combined_progress

    assert _combined_progress([(3, 1, 10.0), (1, 0, 30.0)]) == (4, 1, 15.0)
    assert _combined_progress([(0, 2, None), (0, 0, None)]) == (0, 2, None)
