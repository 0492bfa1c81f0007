"""latlab bench --url drives latlab serve: every request succeeds and usage is read."""

from __future__ import annotations

import pytest

from latlab.bench.api import BenchConfig, run_bench
from latlab.bench.targets import OpenAITarget
from serve.fake_engine import MODEL


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_bench_client_reads_our_stream(url, api):
    config = BenchConfig(
        concurrency=[2], num_requests=6, warmup=1, input_len="8", output_len="5", api=api
    )
    result = run_bench(config, OpenAITarget(f"{url}/v1", model=MODEL, api=api), progress=False)
    summary = result.levels[0].summary
    assert summary.completed == 6
    assert summary.failed == 0
    records = result.levels[0].records
    assert all(r.output_tokens == 5 for r in records)
    assert {r.output_tokens_source for r in records} == {"usage"}
