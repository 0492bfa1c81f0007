"""The HTTP quality gate against the in-process one, on the same model and positions.

Two latlab servers of the bundled model (float32 and bfloat16) are scored over HTTP; the same
two dtypes are scored in-process from full logits. Perplexity and top-1 agreement must agree
(they are exact over HTTP); the coarse KL estimate must not exceed the full KL (it is a lower
bound) and stay close to it.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from latlab.assets import bundled_model_path
from latlab.engine import AsyncLLM, EngineConfig
from latlab.engine.hardware import cpu_capabilities
from latlab.model_files import load_causal_lm, load_tokenizer
from latlab.optimize.http_quality import (
    ScoredText,
    coarse_kl,
    compare_scores,
    greedy_texts,
    http_client,
    score_windows,
)
from latlab.optimize.quality import compare_logits, heldout_logits, windows
from latlab.serve.app import create_app
from latlab.serve.server import running_server

WINDOW, MAX_WINDOWS = 64, 3


def test_coarse_kl_is_zero_for_equal_distributions_and_positive_otherwise() -> None:
    base = {1: math.log(0.6), 2: math.log(0.3), 3: math.log(0.05)}
    assert coarse_kl(base, dict(base), 2) == (pytest.approx(0.0, abs=1e-12), False)
    shifted = {1: math.log(0.3), 2: math.log(0.6), 3: math.log(0.05)}
    kl, estimated = coarse_kl(base, shifted, 2)
    expected = 0.6 * math.log(2) + 0.3 * math.log(0.5)  # rest buckets are equal (0.1)
    assert kl == pytest.approx(expected) and not estimated
    kl_missing, estimated = coarse_kl(base, {1: math.log(0.9), 4: math.log(0.01)}, 2)
    assert estimated and kl_missing > 0


def test_compare_scores_counts_agreement_and_perplexity() -> None:
    base = ScoredText(token_logprobs=[math.log(0.5)] * 2,
                      top=[{1: math.log(0.5), 2: math.log(0.4)}] * 2)  # fmt: skip
    cand = ScoredText(token_logprobs=[math.log(0.25)] * 2,
                      top=[{1: math.log(0.5), 2: math.log(0.4)},
                           {2: math.log(0.5), 1: math.log(0.4)}])  # fmt: skip
    comparison, estimated = compare_scores(base, cand)
    assert comparison.top1_agreement == 0.5 and estimated == 0
    assert comparison.baseline_perplexity == pytest.approx(2.0)
    assert comparison.perplexity == pytest.approx(4.0)
    with pytest.raises(ValueError, match="same"):
        compare_scores(base, ScoredText())


@pytest.fixture(scope="module")
def servers():
    """latlab serve of the bundled model in float32 and bfloat16 (in threads, real HTTP)."""
    engines = {dt: AsyncLLM(EngineConfig(dtype=dt, num_threads=1, kv_cache_bytes=2**24))
               for dt in ("float32", "bfloat16")}  # fmt: skip
    with (
        running_server(create_app(engines["float32"], "m")) as fp32,
        running_server(create_app(engines["bfloat16"], "m")) as bf16,
    ):
        yield {"float32": fp32 + "/v1", "bfloat16": bf16 + "/v1"}
    for engine in engines.values():
        asyncio.run(engine.shutdown())


@pytest.fixture(scope="module")
def text_ids() -> list[int]:
    text = (bundled_model_path() / "heldout.txt").read_text()
    return load_tokenizer(bundled_model_path()).encode(text, add_special_tokens=False)


def _as_the_engine_runs_bf16(model):
    """The bf16 model as latlab's engine computes it on this CPU.

    With bf16 instructions the engine multiplies in bf16; without them (AVX2-only CPUs) it
    multiplies float32 copies of the bf16-rounded weights (latlab.engine.weights), which is a
    different and much smaller rounding than transformers' bf16 matmuls.
    """
    if cpu_capabilities().native_bf16:
        return model.to(torch.bfloat16)
    return model.to(torch.bfloat16).float()


def test_http_gate_agrees_with_the_in_process_gate(servers, text_ids) -> None:
    chunks = windows(text_ids, WINDOW, MAX_WINDOWS)
    with http_client() as client:
        http = {dt: score_windows(client, url, "m", chunks) for dt, url in servers.items()}
    model = load_causal_lm(str(bundled_model_path()), dtype="float32")
    logits32, targets = heldout_logits(model, text_ids, WINDOW, MAX_WINDOWS)
    logits16, _ = heldout_logits(_as_the_engine_runs_bf16(model), text_ids, WINDOW, MAX_WINDOWS)
    full = compare_logits(logits32, logits16.float(), targets)
    estimate, _ = compare_scores(http["float32"], http["bfloat16"])
    assert estimate.positions == full.positions == len(targets)
    # The server's own token log-probabilities are the in-process ones.
    reference = torch.log_softmax(logits32.double(), -1).gather(1, targets[:, None])[:, 0]
    got = torch.tensor(http["float32"].token_logprobs, dtype=torch.float64)
    assert torch.allclose(got, reference, atol=1e-4)
    assert estimate.baseline_perplexity == pytest.approx(full.baseline_perplexity, rel=1e-4)
    assert estimate.perplexity == pytest.approx(full.perplexity, rel=2e-3)
    assert estimate.top1_agreement == pytest.approx(full.top1_agreement, abs=0.02)
    assert estimate.mean_kl <= full.mean_kl * 1.05 + 1e-6  # a lower bound, up to rounding
    assert estimate.mean_kl >= 0.3 * full.mean_kl  # and not a vacuous one


def test_same_server_twice_is_identical_and_greedy_texts_match(servers, text_ids) -> None:
    chunks = windows(text_ids, WINDOW, 1)
    with http_client() as client:
        a = score_windows(client, servers["float32"], "m", chunks)
        b = score_windows(client, servers["float32"], "m", chunks)
        prompts = [chunk[:16] for chunk in chunks]
        texts = greedy_texts(client, servers["float32"], "m", prompts, 8)
        again = greedy_texts(client, servers["float32"], "m", prompts, 8)
    comparison, estimated = compare_scores(a, b)
    assert comparison.mean_kl == pytest.approx(0.0, abs=1e-9)
    assert comparison.top1_agreement == 1.0 and estimated == 0
    assert texts == again and all(texts)


def test_windows_match_the_in_process_cut() -> None:
    ids = list(range(10))
    assert windows(ids, 4, 8) == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9]]
    assert windows(ids, 4, 1) == [[0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match="too short"):
        windows([1], 4, 1)


@pytest.mark.slow
def test_vllm_passes_the_http_gate_against_latlab_on_the_same_weights(
    servers, text_ids, vllm_server
) -> None:
    """vLLM CPU serves the bundled model in float32: its scores against latlab's fp32 server."""
    chunks = windows(text_ids, WINDOW, MAX_WINDOWS)
    with http_client() as client:
        latlab = score_windows(client, servers["float32"], "m", chunks)
        vllm = score_windows(client, vllm_server.url, vllm_server.model, chunks)
        prompts = [chunk[:16] for chunk in chunks]
        texts = greedy_texts(client, vllm_server.url, vllm_server.model, prompts, 8)
    comparison, _ = compare_scores(latlab, vllm)
    assert comparison.positions == latlab.positions
    assert comparison.perplexity == pytest.approx(comparison.baseline_perplexity, rel=0.05)
    assert comparison.top1_agreement >= 0.9
    assert comparison.mean_kl < 0.05
    assert all(texts)  # vLLM answered every greedy prompt
