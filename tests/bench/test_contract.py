"""The Target contract: every built-in target keeps it; a new one is one small class."""

from __future__ import annotations

import time

import pytest

from latlab.bench import (
    BaseTarget,
    BenchConfig,
    CallableTarget,
    EngineTarget,
    OpenAITarget,
    Target,
    TargetSpec,
    run_bench,
)
from latlab.errors import ConfigError

from .fake_targets import FakeEngine, FakeParams, make_stream

MEMBERS = ("name", "remote", "stamps_in_loop", "tokenizer", "settings", "check", "prepare",
           "run", "spec", "aclose")  # fmt: skip


def _cfg(**kw):
    return BenchConfig(**{"num_requests": 4, "warmup": 0, "input_len": "4", "output_len": "3",
                          **kw})  # fmt: skip


def test_the_protocol_lists_every_member_the_runner_uses():
    declared = set(Target.__annotations__) | {n for n in vars(Target) if not n.startswith("_")}
    assert declared == set(MEMBERS)
    for member in MEMBERS:
        assert hasattr(BaseTarget, member)


@pytest.mark.parametrize(
    "target",
    [
        OpenAITarget("http://127.0.0.1:9/v1"),
        CallableTarget(make_stream()),
        EngineTarget(FakeEngine(), sampling_params=FakeParams),
    ],
    ids=["openai", "callable", "engine"],
)
def test_built_in_targets_keep_the_contract(target):
    assert isinstance(target, Target)


class _Counter(BaseTarget):
    """A new target: only ``run`` written, everything else from BaseTarget."""

    name = "counter"

    async def run(self, req, rec, opts):
        rec.send_ns = time.perf_counter_ns()
        for _ in range(req.max_tokens):
            rec.chunk_ns.append(time.perf_counter_ns())
            rec.chunk_tokens.append(1)
        rec.end_ns = time.perf_counter_ns()
        rec.output_tokens = req.max_tokens


def test_a_target_that_writes_only_run_is_measured():
    result = run_bench(_cfg(concurrency=[2]), _Counter(), progress=False)
    summary = result.levels[0].summary
    assert summary.completed == 4 and summary.output_tokens == 12
    assert result.target == {"name": "counter", "remote": False}


def test_in_process_targets_cannot_be_sharded_across_workers():
    with pytest.raises(ConfigError, match="needs an HTTP target"):
        run_bench(_cfg(workers=2), _Counter(), progress=False)


def test_an_http_target_rebuilds_itself_from_its_spec():
    target = OpenAITarget("http://127.0.0.1:9/v1", model="m", api="chat", api_key="k")
    spec = target.spec()
    assert isinstance(spec, TargetSpec) and spec.kind is OpenAITarget
    again = spec.build()
    assert (again.endpoint, again.model, again.api, again.api_key) == (
        target.endpoint, "m", "chat", "k")  # fmt: skip
