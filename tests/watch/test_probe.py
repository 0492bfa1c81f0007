"""The probe: same client as latlab bench, never-cached prompts, paced, one at a time."""

import asyncio
import itertools
import time

from latlab.watch.config import WatchConfig
from latlab.watch.probe import Pacer, Prober, unreachable


def _cycle(config: WatchConfig, cycles: int = 1):
    async def go():
        prober = Prober(config)
        try:
            return [rec for _ in range(cycles) for rec in await prober.cycle()], prober
        finally:
            await prober.aclose()

    return asyncio.run(go())


def test_prompts_are_unique_from_their_first_words_on():
    prober = Prober(WatchConfig(url="http://127.0.0.1:9/v1", prompt_tokens="16"))
    reqs = [prober.request() for _ in range(50)]
    assert len({r.request_id for r in reqs}) == 50
    assert len({" ".join(r.prompt.split()[:6]) for r in reqs}) == 50  # the salt tag differs
    assert len({" ".join(r.prompt.split()[6:]) for r in reqs}) == 8  # a fixed mix of bodies
    assert {len(r.prompt.split()) for r in reqs} == {16} and {r.max_tokens for r in reqs} == {32}
    other = Prober(WatchConfig(url="http://127.0.0.1:9/v1", prompt_tokens="16")).request()
    assert other.prompt.split()[:6] != reqs[0].prompt.split()[:6]  # a new salt per watch


def test_records_are_bench_records_and_sends_are_paced(stub):
    config = WatchConfig(url=stub.url, requests_per_cycle=4, interval_s=1.0, max_rate=20.0,
                         max_tokens="5", concurrency=2)  # fmt: skip
    records, prober = _cycle(config)
    assert prober.target.model == "stub-model"  # learnt from /v1/models
    assert all(r.ok and r.output_tokens == 5 and r.ttft_ns > 0 for r in records)
    sends = sorted(r.send_ns for r in records)
    assert (sends[-1] - sends[0]) / 1e6 >= 3 * 50 - 10  # 1 / max_rate apart, 2 may be in flight


def test_pacer_releases_at_most_max_rate():
    async def go():
        pacer, released = Pacer(50.0), []

        async def one():
            await pacer.wait()
            released.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(6)))
        return sorted(released)

    released = asyncio.run(go())
    assert min(b - a for a, b in itertools.pairwise(released)) >= 0.02 - 0.001


def test_one_at_a_time_by_default(stub):
    records, _ = _cycle(WatchConfig(url=stub.url, requests_per_cycle=3, interval_s=10,
                                    max_rate=10.0, max_tokens="3"))  # fmt: skip
    ordered = sorted(records, key=lambda r: r.send_ns)
    assert all(b.send_ns >= a.end_ns for a, b in itertools.pairwise(ordered))


def test_unreachable_server_gives_failed_records_not_exceptions():
    records, _prober = _cycle(WatchConfig(url="http://127.0.0.1:1/v1", requests_per_cycle=2,
                                         interval_s=10))  # fmt: skip
    assert [r.error for r in records] == ["unreachable", "unreachable"]
    assert "cannot reach" in records[0].error_detail and unreachable(records)
    records, _ = _cycle(WatchConfig(url="http://127.0.0.1:1/v1", model="m", interval_s=10))
    assert records[0].error == "connect_error" and unreachable(records)
