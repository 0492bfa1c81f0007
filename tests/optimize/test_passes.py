"""The engine runner on a fake engine: waves, prefix grouping, per-request failures."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from latlab.gateway import group_by_prefix, trim_token_ids
from latlab.optimize.lab_workload import LabRequest, LabWorkload, build_requests
from latlab.optimize.passes import EngineRunner, prepare
from latlab.optimize.subject import Setup


class FakeEngine:
    """Streams ``max_tokens`` tokens 2 ms apart; logs when each prompt starts and ends."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[int, ...]]] = []

    async def generate(self, prompt, max_tokens, request_id=None):
        key = tuple(prompt)
        self.events.append(("start", key))
        if prompt[-1] == -1:
            raise RuntimeError("boom")
        for i in range(max_tokens):
            await asyncio.sleep(0.002)
            yield SimpleNamespace(new_token_ids=[i])
        self.events.append(("end", key))


def _runner(workload: LabWorkload, **flags) -> tuple[EngineRunner, FakeEngine]:
    engine = FakeEngine()
    setup = Setup("engine", "unused", None, **flags)
    return EngineRunner(setup, workload, lambda _: engine, lambda n: n), engine


WORKLOAD = LabWorkload(
    num_requests=6,
    prompt_len=8,
    shared_prefix_len=4,
    output_len=3,
    num_prefixes=2,
    repeat_fraction=0.0,
    concurrency=6,
)
REQUESTS = build_requests(list(range(100)), WORKLOAD)


def test_continuous_sends_everything_at_once():
    runner, engine = _runner(WORKLOAD)
    result = runner.run(REQUESTS)
    assert [e for e, _ in engine.events[:6]] == ["start"] * 6
    assert all(out == [0, 1, 2] for out in result.outputs.values())
    assert all(r.intended_send_ns is None and r.ok for r in result.records)
    runner.close()


def test_static_batching_waits_for_each_wave():
    runner, engine = _runner(
        LabWorkload(**{**WORKLOAD.to_dict(), "concurrency": 3}), static_batching=True
    )
    runner.run(REQUESTS)
    kinds = [e for e, _ in engine.events]
    assert kinds == ["start"] * 3 + ["end"] * 3 + ["start"] * 3 + ["end"] * 3
    runner.close()


def test_grouping_sends_followers_after_the_leaders_first_token():
    runner, engine = _runner(WORKLOAD, group_by_prefix=True)
    result = runner.run(REQUESTS)
    starts = [key for e, key in engine.events if e == "start"]
    # The two group leaders start first; every follower shares a leader's prefix.
    leaders = starts[:2]
    assert {k[:4] for k in leaders} == {r.prompt_ids[:4] for r in REQUESTS}
    followers = [r for r in result.records if r.intended_send_ns is not None]
    assert len(followers) == 4
    # Their hold counts as latency: TTFT is measured from when they were ready.
    assert all(r.ttft_ns >= r.chunk_ns[0] - r.send_ns for r in followers)
    assert all(r.send_ns - r.intended_send_ns > 0 for r in followers)
    runner.close()


def test_a_failing_request_is_recorded_not_raised():
    bad = [*REQUESTS[:2]]
    bad[1] = type(bad[1])(bad[1].request_id, (*bad[1].prompt_ids[:-1], -1), bad[1].prefix_id)
    runner, _ = _runner(WORKLOAD, group_by_prefix=True)
    result = runner.run(bad)
    failed = [r for r in result.records if not r.ok]
    assert len(failed) == 1 and failed[0].error == "RuntimeError"
    runner.close()


def test_a_pass_is_a_bench_level_and_the_response_cache_answers_repeats():
    workload = LabWorkload(**{**WORKLOAD.to_dict(), "repeat_fraction": 0.5, "concurrency": 1})
    requests = build_requests(list(range(100)), workload)
    distinct = {r.prompt_ids for r in requests}
    assert len(distinct) < len(requests)  # the workload repeats some prompts
    runner, engine = _runner(workload, response_cache=True)
    result = runner.run(requests)
    # timed by latlab.bench's closed-loop runner: its record ids and its summary
    assert [r.request_id for r in result.records] == [f"c1-{i}" for i in range(len(requests))]
    assert result.summary is not None and result.summary.completed == len(requests)
    assert result.extra["response_cache_hits"] == len(requests) - len(distinct)
    assert len([e for e, _ in engine.events if e == "start"]) == len(distinct)
    assert all(out == [0, 1, 2] for out in result.outputs.values())
    again = runner.run(requests)  # the cache lives one pass: the model is asked again
    assert again.extra["response_cache_hits"] == len(requests) - len(distinct)
    runner.close()


def test_prepare_groups_and_trims_with_the_gateways_own_functions():
    reqs = [LabRequest("r0", (1, 2, 3, 4, 9), 0), LabRequest("r1", (5, 6, 7, 8, 9), 1),
            LabRequest("r2", (1, 2, 3, 4, 7), 0)]  # fmt: skip
    setup = SimpleNamespace(group_by_prefix=True, prompt_token_budget=3)
    out = prepare(setup, reqs, prefix_len=4)
    groups = group_by_prefix(reqs, lambda r: r.prompt_ids, block=4)
    assert [r for r, _ in out] == [r for g in groups for r in g]
    assert [r.request_id for r, _ in out] == ["r0", "r2", "r1"]
    assert [p for _, p in out] == [trim_token_ids(list(r.prompt_ids), 3) for r, _ in out]
