"""Load modes, warmup, sweeps, Ctrl-C, the client self-check, and in-process targets."""

import asyncio
import itertools
import os
import signal
import threading
import time

import pytest

from latlab.bench import BenchConfig, CallableTarget, EngineTarget, arun_bench, run_bench
from latlab.bench.runner import Runner, RunSettings
from latlab.errors import ConfigError, TargetError

from .fake_targets import FakeEngine, FakeParams, Gauge, blocking_stream, make_stream


def cfg(**kw):
    base = {"num_requests": 8, "warmup": 0, "input_len": "4", "output_len": "4"}
    return BenchConfig(**{**base, **kw})


def test_closed_loop_keeps_exactly_n_users_busy():
    g = Gauge()
    res = run_bench(cfg(concurrency=[3], num_requests=12), CallableTarget(make_stream(g)), False)
    lv = res.levels[0]
    assert lv.load == {"concurrency": 3}
    assert lv.summary.completed == 12 and g.calls == 12 and g.peak == 3
    assert lv.summary.output_tokens == 48
    assert all(r.intended_send_ns is None for r in lv.records)


def test_sweep_gives_one_row_per_level_and_warmup_is_excluded():
    g = Gauge()
    res = run_bench(cfg(concurrency=[1, 2, 4], warmup=3), CallableTarget(make_stream(g)), False)
    assert [lv.load for lv in res.levels] == [{"concurrency": c} for c in (1, 2, 4)]
    assert res.warmup_requests == 3
    assert g.calls == 3 + 3 * 8
    assert all(lv.summary.completed == 8 for lv in res.levels)
    assert all(not r.warmup for lv in res.levels for r in lv.records)


def test_open_loop_poisson_measures_from_the_intended_send_time():
    res = run_bench(cfg(rate=[200.0], num_requests=20), CallableTarget(make_stream()), False)
    lv = res.levels[0]
    assert lv.load == {"rate": 200.0}
    assert lv.summary.completed == 20
    recs = lv.records
    assert all(r.intended_send_ns is not None for r in recs)
    assert all(r.ttft_ns >= r.chunk_ns[0] - r.send_ns for r in recs)
    assert lv.summary.queue_ms.count == 20
    gaps = [b.intended_send_ns - a.intended_send_ns for a, b in itertools.pairwise(recs)]
    assert 2e6 < sum(gaps) / len(gaps) < 10e6  # mean gap about 1/200 s


def test_open_loop_burst_and_gamma():
    res = run_bench(cfg(rate=[float("inf")], num_requests=6), CallableTarget(make_stream()), False)
    assert len({r.intended_send_ns for r in res.levels[0].records}) == 1
    res = run_bench(cfg(rate=[100.0], burstiness=0.5, num_requests=10),
                    CallableTarget(make_stream()), False)  # fmt: skip
    assert res.levels[0].summary.completed == 10


def test_duration_mode_stops_sending_when_time_is_up():
    start = time.perf_counter()
    res = run_bench(cfg(concurrency=[2], num_requests=None, duration_s=0.3),
                    CallableTarget(make_stream(ttft_s=0.01, itl_s=0.0)), False)  # fmt: skip
    took = time.perf_counter() - start
    s = res.levels[0].summary
    assert took >= 0.3 and s.completed > 0
    # Nothing is sent once the time is up (a loaded machine may delay a send's own stamp).
    sends = [r.send_ns for r in res.levels[0].records]
    assert (max(sends) - min(sends)) / 1e9 < 0.3 + 1.0
    assert s.requests_per_s == pytest.approx(s.completed / s.duration_s)


def test_sync_callable_runs_in_a_thread_and_counts_token_lists():
    res = run_bench(cfg(concurrency=[2], num_requests=4), CallableTarget(blocking_stream), False)
    s = res.levels[0].summary
    assert s.completed == 4 and s.output_tokens == 16
    assert s.chunk_gap_ms.p50 >= 1.5


def test_engine_target_with_a_fake_async_engine():
    engine = FakeEngine()
    target = EngineTarget(engine, sampling_params=FakeParams, owns_engine=True)
    res = run_bench(cfg(concurrency=[2], num_requests=4, output_len="7"), target, False)
    lv = res.levels[0]
    assert lv.summary.completed == 4
    assert lv.summary.tokens_per_chunk == {1: 4, 2: 12}
    assert lv.summary.multi_token_chunks == 12
    r = lv.records[0]
    assert r.output_tokens == 7 and r.output_tokens_source == "engine" and r.prompt_tokens == 3
    assert engine.shut and len(set(engine.seen_ids)) == 4


def test_engine_errors_become_reasons():
    from latlab.errors import OverloadedError

    class Full(FakeEngine):
        async def generate(self, prompt, params, request_id=None):
            raise OverloadedError("queue full")
            yield  # pragma: no cover

    res = run_bench(cfg(num_requests=2), EngineTarget(Full(), sampling_params=FakeParams), False)
    assert res.levels[0].summary.errors == {"overloaded": 2}


def test_stop_request_drains_in_flight_and_keeps_what_was_measured():
    holder = {}

    async def go():
        async def stop_soon():
            await asyncio.sleep(0.25)
            holder["runner"].request_stop()

        task = asyncio.create_task(stop_soon())
        cfg_ = cfg(concurrency=[2, 4], num_requests=1000)
        target = CallableTarget(make_stream(ttft_s=0.01, itl_s=0.01, tokens=5))
        res = await arun_bench(cfg_, target, False, runner_hook=lambda r: holder.update(runner=r))
        await task
        return res

    res = asyncio.run(go())
    assert res.interrupted
    assert len(res.levels) == 1  # the second level never started
    s = res.levels[0].summary
    assert 5 < s.completed < 1000
    assert s.failed == 0  # in-flight requests finished within the drain time


def test_stop_cancels_what_does_not_drain_in_time():
    async def go():
        runner_box = {}

        async def stop_soon():
            await asyncio.sleep(0.1)
            runner_box["r"].drain_s = 0.05
            runner_box["r"].request_stop()

        task = asyncio.create_task(stop_soon())
        target = CallableTarget(make_stream(ttft_s=0.02, itl_s=1.0, tokens=3))
        res = await arun_bench(cfg(concurrency=[2], num_requests=10), target, False,
                               runner_hook=lambda r: runner_box.update(r=r))  # fmt: skip
        await task
        return res

    res = asyncio.run(go())
    assert res.interrupted
    assert res.levels[0].summary.errors == {"interrupted": 2}


def test_ctrl_c_signal_stops_the_run_gracefully():
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        res = run_bench(cfg(concurrency=[2], num_requests=100_000),
                        CallableTarget(make_stream(ttft_s=0.005, itl_s=0.001)), False)  # fmt: skip
    finally:
        timer.cancel()
    assert res.interrupted and res.levels[0].summary.completed > 0


def test_a_client_that_blocks_its_event_loop_is_flagged_client_bound():
    def spin(seconds):  # burns CPU in the event loop: the client is the bottleneck
        # CPU seconds, not wall seconds: on a loaded machine a wall-clock spin gets less CPU.
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    async def hog(prompt, max_tokens):
        await asyncio.sleep(0)
        spin(0.03)
        yield "x"
        await asyncio.sleep(0)
        spin(0.03)
        yield "y"

    res = run_bench(cfg(concurrency=[2], num_requests=10), CallableTarget(hog), False)
    client = res.levels[0].client
    assert client.client_bound
    assert any("event-loop lag" in why for why in client.reasons)
    assert client.cpu_s > 0.2


def test_a_light_client_is_not_flagged():
    res = run_bench(cfg(concurrency=[1], num_requests=5), CallableTarget(make_stream()), False)
    assert res.levels[0].client.cpu_s_per_1k_tokens is not None


@pytest.mark.parametrize(
    "kw",
    [{"concurrency": [1], "rate": [1.0]}, {"concurrency": [0]}, {"rate": [0.0]},
     {"num_requests": None}, {"num_requests": 0}, {"duration_s": -1.0}, {"warmup": -1},
     {"input_len": "zero"}, {"rate": [float("inf")], "num_requests": None, "duration_s": 1.0}],
)  # fmt: skip
def test_bad_configs_raise_config_errors(kw):
    with pytest.raises(ConfigError):
        cfg(**kw)


def test_callable_spec_errors():
    with pytest.raises(TargetError, match="module:function"):
        CallableTarget.from_spec("nocolon")
    with pytest.raises(TargetError, match="cannot import"):
        CallableTarget.from_spec("no_such_module_x:fn")
    with pytest.raises(TargetError, match="has no attribute"):
        CallableTarget.from_spec("os:no_such_fn")
    assert CallableTarget.from_spec("bench.fake_targets:blocking_stream").fn is blocking_stream


def test_runner_cycles_prompts_when_it_needs_more():
    from latlab.workload import BenchRequest

    seen = []

    async def fn(prompt, max_tokens):
        seen.append(prompt)
        yield "x"

    reqs = [BenchRequest("a", 1), BenchRequest("b", 1)]
    runner = Runner(CallableTarget(fn), reqs, None, settings=RunSettings(num_requests=5))
    asyncio.run(runner.run_level({"concurrency": 1}))
    assert seen == ["a", "b", "a", "b", "a"]


def test_every_request_of_a_sweep_gets_its_own_prompt_and_runs_differ():
    def recorder():
        seen = []

        async def fn(prompt, max_tokens):
            seen.append(prompt)
            yield "x"

        return fn, seen

    config = cfg(concurrency=[1, 2], num_requests=3, warmup=2, input_len="12")
    fn, first = recorder()
    res = run_bench(config, CallableTarget(fn), False)
    assert len(first) == 8 == len(set(first))  # warmup and both levels: all distinct
    salt = res.workload["salt"]
    assert salt and res.to_dict()["workload"]["salt"] == salt
    fn, second = recorder()
    run_bench(config, CallableTarget(fn), False)
    assert not set(first) & set(second)  # another run, another salt
    fn, replay = recorder()
    run_bench(cfg(**{**config.to_dict(), "salt": salt}), CallableTarget(fn), False)
    assert replay == first  # the recorded salt and the seed repeat the run exactly
    fn, unsalted = recorder()
    run_bench(cfg(**{**config.to_dict(), "salt": ""}), CallableTarget(fn), False)
    assert sorted(unsalted[2:5]) == sorted(unsalted[5:8])  # --no-salt: levels re-send them


def test_plain_asyncio_loop_works_and_bad_loop_names_are_refused():
    res = run_bench(cfg(num_requests=3), CallableTarget(make_stream()), False, loop="asyncio")
    assert res.levels[0].summary.completed == 3
    with pytest.raises(ConfigError, match="loop"):
        run_bench(cfg(), CallableTarget(make_stream()), False, loop="trio")
