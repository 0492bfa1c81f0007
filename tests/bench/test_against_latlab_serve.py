"""The client against a real ASGI server: ``latlab serve``'s app on the engine (tiny model)."""

import pytest

from latlab.bench import BenchConfig, OpenAITarget, run_bench

pytest.importorskip("fastapi")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from latlab.engine import AsyncLLM, EngineConfig
    from latlab.serve.app import create_app
    from latlab.serve.server import running_server
    from latlab.testing.random_model import save_random_llama

    model = save_random_llama(tmp_path_factory.mktemp("served") / "m")
    engine = AsyncLLM(EngineConfig(model=str(model), dtype="float32"))
    with running_server(create_app(engine, "tiny")) as base:
        yield base


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["raw", "httpx"])
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_streams_from_uvicorn_are_framed_and_counted_right(served, transport, api):
    base = served if served.endswith("/v1") else served.rstrip("/") + "/v1"
    target = OpenAITarget(base, api=api, transport=transport)
    config = BenchConfig(concurrency=[3], num_requests=6, warmup=1, input_len="8",
                         output_len="6", api=api)  # fmt: skip
    level = run_bench(config, target, False).levels[0]
    s = level.summary
    assert (s.completed, s.failed) == (6, 0), s.errors
    assert target.model == "tiny"
    assert s.output_tokens == 36 and s.output_tokens_source == {"usage": 6}
    assert all(r.ttft_ns > 0 and r.e2e_ns >= r.ttft_ns for r in level.records)
