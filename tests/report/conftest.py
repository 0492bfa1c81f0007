"""Runs to draw: a 3-level bench sweep with an SLO against the stub server (twice, the second
slower), and an optimize result shaped as ``latlab optimize`` writes it."""

from __future__ import annotations

import pytest

from latlab.bench import BenchConfig, OpenAITarget, run_bench
from latlab.metrics import SLO
from latlab.runs import Run, RunInfo
from latlab.testing import StubServer


def _sweep(ttft_s: float, tokens_per_chunk: int) -> dict:
    config = BenchConfig(concurrency=[1, 4, 16], num_requests=48, warmup=2, input_len="8",
                         output_len="12", slo=SLO(ttft_ms=40, tpot_ms=5))  # fmt: skip
    with StubServer(ttft_s=ttft_s, itl_s=0.003, tokens_per_chunk=tokens_per_chunk) as url:
        return run_bench(config, OpenAITarget(url), progress=False).to_dict()


def as_run(result: dict, name: str, kind: str = "bench") -> Run:
    return Run(info=RunInfo(id=None, kind=kind, name=name, headline=f"{name} run"),
               result=result, where=f"{name}.json")  # fmt: skip


@pytest.fixture(scope="session")
def sweeps() -> list[Run]:
    return [as_run(_sweep(0.02, 1), "fast"), as_run(_sweep(0.035, 2), "slow")]


def _trial(name: str, ttft: float, itl: float, verdict: str, quality: dict | None) -> dict:
    def delta(pct: float) -> dict:
        return {"baseline": 1.0, "candidate": 1.0, "change_pct": pct, "noise_pct": 2.0,
                "significant": abs(pct) > 2, "improved": pct < -2, "worsened": pct > 2}  # fmt: skip

    return {"name": name, "level": "system", "verdict": verdict, "reason": "",
            "deltas": {"ttft": delta(ttft), "itl": delta(itl),
                       "throughput": {**delta(-itl), "improved": itl < -2, "worsened": itl > 2},
                       "memory": delta(0.0)},
            "quality": quality}  # fmt: skip


@pytest.fixture(scope="session")
def optimize_run() -> Run:
    logits = {"positions": 64, "mean_kl": 1.2e-4, "p99_kl": 3e-3, "top1_agreement": 0.986,
              "baseline_perplexity": 10.0, "perplexity": 10.1,
              "perplexity_change_pct": 1.0}  # fmt: skip
    result = {"schema_version": 1, "kind": "latlab.optimize", "model": "bundled",
              "figures": {"ttft": {}, "itl": {}, "throughput": {}, "memory": {}},
              "trials": [_trial("threads-2", -31.0, -1.7, "adopt", {"greedy_match_rate": 1.0}),
                         _trial("dtype-bfloat16", -47.5, 24.1, "reject",
                                {"logits": logits, "greedy_match_rate": 0.9}),
                         {"name": "int4-weight-only", "level": "model", "verdict": "skip",
                          "reason": "needs CUDA", "deltas": {}, "quality": None}],
              "adopted": ["threads-2"]}  # fmt: skip
    return as_run(result, "lab", kind="optimize")
