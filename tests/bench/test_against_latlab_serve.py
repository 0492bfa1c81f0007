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


def _cache_share(levels):
    cached = sum(lv.summary.cache.cached_tokens for lv in levels)
    prompt = sum(lv.summary.cache.prompt_tokens for lv in levels)
    return cached / prompt


@pytest.mark.slow
def test_a_sweep_and_a_second_run_with_the_default_seed_miss_the_prefix_cache(served):
    """Prefix caching is on (the engine's default): only the salt keeps later levels and runs
    from reading the earlier ones' cache entries; unsalted, the same run hits it heavily."""
    base = served.rstrip("/") + "/v1"
    config = BenchConfig(concurrency=[1, 2, 4], num_requests=6, warmup=1, input_len="64",
                         output_len="2")  # fmt: skip
    runs = [run_bench(config, OpenAITarget(base), False) for _ in range(2)]
    levels = [lv for run in runs for lv in run.levels]
    assert all(lv.summary.cache.requests == 6 for lv in levels)
    assert _cache_share(levels) < 0.02
    # a load measured again (--repeats, a capacity probe re-measured) sends new prompts too
    repeated = BenchConfig(**{**config.to_dict(), "concurrency": [2], "repeats": 3})
    assert _cache_share(run_bench(repeated, OpenAITarget(base), False).levels) < 0.02
    unsalted = BenchConfig(**{**config.to_dict(), "salt": ""})
    again = [run_bench(unsalted, OpenAITarget(base), False) for _ in range(2)]
    assert _cache_share([lv for run in again for lv in run.levels]) > 0.5


@pytest.mark.slow
def test_shared_prefix_hits_the_cache_as_designed(served):
    """Each group shares its first 64 tokens (4 blocks of 16): every request after the first
    of its group reads exactly those from the cache, and nothing of its own suffix."""
    from latlab.assets import bundled_model_path
    from latlab.model_files import load_tokenizer

    base = served.rstrip("/") + "/v1"
    target = OpenAITarget(base, tokenizer=load_tokenizer(str(bundled_model_path())))
    config = BenchConfig(concurrency=[1], num_requests=8, warmup=0, dataset="shared-prefix",
                         prefix_groups=2, prefix_len=64, input_len="24",
                         output_len="2")  # fmt: skip
    level = run_bench(config, target, False).levels[0]
    cached = [r.cached_tokens for r in level.records]
    assert [r.prompt_tokens for r in level.records] == [88] * 8
    assert cached == [0, 0, 64, 64, 64, 64, 64, 64]


@pytest.mark.slow
@pytest.mark.parametrize("use_tokenize", [True, False])
@pytest.mark.parametrize("api", ["completions", "chat"])
def test_prompts_are_as_long_as_asked_in_the_servers_tokens_without_a_tokenizer(
    served, monkeypatch, api, use_tokenize
):
    """No --tokenizer: the client calibrates on the server (its /tokenize, or the usage of
    probe requests) and the prompts come out exactly as long as asked, chat template and BOS
    included."""
    from latlab.bench import server_tokens

    real = server_tokens.ServerTokenCounter.__init__
    monkeypatch.setattr(server_tokens.ServerTokenCounter, "__init__",
                        lambda self, t, **kw: real(self, t, use_tokenize=use_tokenize))  # fmt: skip
    base = served.rstrip("/") + "/v1"
    config = BenchConfig(concurrency=[2], num_requests=6, warmup=0, input_len="uniform:40:90",
                         output_len="2", api=api)  # fmt: skip
    res = run_bench(config, OpenAITarget(base, api=api), False)
    words = res.workload["prompt_words"]
    assert words["exact"] and words["source"] == ("server /tokenize" if use_tokenize
                                                  else "server usage")  # fmt: skip
    pl = res.levels[0].summary.prompt_length
    assert pl.requests == 6 and pl.mean_abs_error < 0.02
    assert all(r.prompt_tokens == r.prompt_tokens_requested for r in res.levels[0].records)


@pytest.mark.slow
def test_tokenize_and_detokenize_answer_as_vllm_does(served):
    import httpx

    from latlab.assets import bundled_model_path
    from latlab.model_files import load_tokenizer

    tok = load_tokenizer(str(bundled_model_path()))
    with httpx.Client(base_url=served) as client:
        plain = client.post("/tokenize", json={"prompt": " the time"}).json()
        assert plain["tokens"] == tok.encode(" the time") and plain["count"] == 3
        bare = client.post("/tokenize", json={"prompt": " the time", "add_special_tokens": False})
        assert bare.json()["count"] == 2
        chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
        text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True)  # fmt: skip
        assert chat.json()["tokens"] == tok.encode(text, add_special_tokens=False)
        back = client.post("/detokenize", json={"tokens": plain["tokens"][1:]}).json()
        assert back == {"prompt": " the time"}
        both = client.post("/tokenize", json={"prompt": "a", "messages": []})
        assert both.status_code == 400 and "exactly one" in both.json()["error"]["message"]
        wrong = client.post("/tokenize", json={"model": "other", "prompt": "a"})
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "model_not_found"
