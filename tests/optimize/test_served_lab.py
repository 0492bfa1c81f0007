"""The served lab: one launch per configuration, measured over HTTP, gated over HTTP.

The mechanics run on ``latlab serve`` launches (seconds each); one vLLM recipe runs end to end
on the real vLLM CPU build (two launches: the baseline and the candidate).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from live_vllm import vllm_command_or_skip

from latlab.deploy.latlab_server import LatlabServerBackend
from latlab.errors import ConfigError
from latlab.optimize.lab_plan import DEFAULT_VLLM_RECIPES, default_vllm_plan, plan_from_dict
from latlab.optimize.recipes import prompt_trim, torch_compile
from latlab.optimize.report import strategy_table, write_report
from latlab.optimize.served_lab import run_served_lab
from latlab.optimize.subject import Setup
from latlab.optimize.vllm_recipes import (
    VLLM_RECIPES,
    accelerator,
    cpu_binding,
    cpu_has_native_bf16,
    cpu_threads,
    for_servers,
    kv_cache_dtype,
    quantization,
    tensor_parallel,
)
from latlab.procs import http_ok

SMALL = {"num_requests": 6, "prompt_len": 24, "output_len": 6, "shared_prefix_len": 8,
         "concurrency": 2}  # fmt: skip
QUALITY = {"windows": 2, "window_tokens": 32}


def _setup(**engine: object) -> Setup:
    return Setup(backend="vllm", model_path="m", tokenizer=None, engine_options=dict(engine))


def test_vllm_recipes_add_flags_and_env_and_say_why_not() -> None:
    base = _setup()
    recipe = kv_cache_dtype("fp8")
    applied = recipe.apply(base)
    assert applied.engine_options == {"kv_cache_dtype": "fp8"} and base.engine_options == {}
    assert recipe.why_not(applied) == "the baseline already has {'kv_cache_dtype': 'fp8'}"
    threads = cpu_threads()
    if accelerator()[0] == "cpu":
        cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        # vLLM 0.32 parses a core list ("0,1"), never the word "all" (it failed to start)
        assert threads.apply(base).engine_env == {"VLLM_CPU_OMP_THREADS_BIND": cores,
                                                  "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # fmt: skip
        assert cpu_threads("nobind").apply(base).engine_env["VLLM_CPU_OMP_THREADS_BIND"] == (
            "nobind")  # fmt: skip
        assert "needs a CUDA GPU" in (quantization("fp8").why_not(base) or "")
        assert "splits one machine's cores" in (tensor_parallel(2).why_not(base) or "")
    assert "pre-quantized checkpoint" in (quantization("awq").why_not(base) or "")
    if accelerator()[0] == "cuda":
        assert quantization("awq", checkpoint="/q").apply(base).model_path == "/q"


def test_cpu_tensor_parallel_binds_each_rank_to_its_own_cores() -> None:
    assert cpu_binding(2, [0, 1]) == {"VLLM_CPU_OMP_THREADS_BIND": "0|1",
                                      "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # fmt: skip
    assert cpu_binding(2, [2, 3, 4, 5])["VLLM_CPU_OMP_THREADS_BIND"] == "2,3|4,5"
    if accelerator()[0] == "cpu":
        applied = tensor_parallel(2, on_cpu=True).apply(_setup())
        assert applied.engine_options == {"tensor_parallel_size": 2}
        assert "|" in applied.engine_env["VLLM_CPU_OMP_THREADS_BIND"]


def test_request_recipes_apply_unchanged_and_engine_recipes_are_refused() -> None:
    trim = for_servers(prompt_trim(16))
    assert trim.backend == "vllm" and trim.apply(_setup()).prompt_token_budget == 16
    with pytest.raises(ConfigError, match="use the vllm-\\* recipes"):
        for_servers(torch_compile())


def test_default_vllm_plan_names_only_known_recipes_and_bounds_the_cpu_cache() -> None:
    plan = default_vllm_plan()
    assert [r.name for r in plan.recipes] == [r["name"] for r in DEFAULT_VLLM_RECIPES]
    assert all(r["name"] in VLLM_RECIPES or r["name"] in ("response-cache", "prompt-trim",
               "group-by-prefix") for r in DEFAULT_VLLM_RECIPES)  # fmt: skip
    if accelerator()[0] == "cpu":
        assert plan.engine_env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
        assert plan.engine == ({} if cpu_has_native_bf16() else {"dtype": "float32"})
    assert plan.time_budget_s is not None and plan.time_budget_s < 20 * 60


@pytest.mark.parametrize(
    ("flags", "native"),
    [("flags\t\t: fpu avx2 fma\n", False), ("flags\t: avx2 avx512_bf16\n", True),
     ("flags\t: avx2 amx_bf16 amx_tile\n", True), ("processor\t: 0\n", True)],
)  # fmt: skip
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    (tmp_path / "cpuinfo").write_text(flags)
    assert cpu_has_native_bf16(str(tmp_path / "cpuinfo")) is native
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is True  # unknown: vLLM's default


def test_plan_engine_env_must_be_strings() -> None:
    with pytest.raises(ConfigError, match="engine_env"):
        plan_from_dict({"recipes": ["response-cache"], "engine_env": {"X": 1}})


@pytest.mark.slow
def test_served_lab_runs_request_recipes_on_the_baseline_server(tmp_path: Path) -> None:
    plan = plan_from_dict({"recipes": ["response-cache", {"name": "prompt-trim", "budget": 12}],
                           "workload": SMALL, "quality": QUALITY,
                           "engine": {"num_threads": 1}})  # fmt: skip
    result = run_served_lab(plan, None, None, backend=LatlabServerBackend(),
                            log_dir=tmp_path / "logs")  # fmt: skip
    cache, trim = result.trials
    assert cache.verdict in ("adopt", "reject") and cache.quality is not None
    assert cache.quality.greedy_match_rate == 1.0  # a cache hit repeats the reply exactly
    assert cache.candidate is not None and cache.candidate.extra["response_cache_hits"] > 0
    for trial in (cache, trim):
        assert trial.candidate is not None and trial.candidate.extra["cold_start_s"] > 0
        assert trial.candidate.extra["kv_cache_tokens"] > 0
        assert len(trial.candidate.reps) == len(trial.baseline.reps) == plan.repeats
        # request-level recipes change no flag: measured on the baseline's server
        assert trial.candidate.extra["launched_by_lab"] is False
        assert trial.candidate.extra["url"] == trial.baseline.extra["url"]
    assert trim.quality is not None and trim.quality.logits is None  # judged by its outputs
    (log,) = (tmp_path / "logs").glob("latlab-server-*.log")  # the baseline's launch only
    assert not http_ok(f"http://127.0.0.1:{log.stem.rsplit('-', 1)[1]}/health")  # stopped


@pytest.mark.slow
def test_one_vllm_recipe_measured_end_to_end(vllm_server: Any, tmp_path: Path) -> None:
    """The session's vLLM is the baseline (lent, left running); the candidate is launched."""
    from latlab.assets import bundled_model_path
    from latlab.deploy.vllm import VllmBackend

    plan = plan_from_dict({"recipes": [{"name": "vllm-max-num-seqs", "value": 1}],
                           "workload": SMALL, "quality": QUALITY}, backend="vllm")  # fmt: skip
    result = run_served_lab(plan, str(bundled_model_path()), None,
                            backend=VllmBackend(vllm_command_or_skip()),
                            log_dir=tmp_path / "logs", baseline_server=vllm_server)  # fmt: skip
    (trial,) = result.trials
    assert trial.verdict in ("adopt", "reject"), trial.reason
    assert trial.quality is not None and trial.quality.logits is not None
    assert trial.quality.logits.top1_agreement > 0.9  # same weights, same dtype
    assert trial.candidate is not None and trial.candidate.extra["cold_start_s"] > 0
    assert "ttft" in trial.deltas and "throughput" in trial.deltas
    paths = write_report(result, tmp_path / "out")
    assert "vllm-max-num-seqs-1" in strategy_table(result.trials)
    (record,) = json.loads(Path(paths["json"]).read_text())["trials"]
    assert record["baseline"]["extra"]["launched_by_lab"] is False  # says whose baseline it was
    assert record["baseline"]["extra"]["url"] == vllm_server.url
    assert record["candidate"]["extra"]["launched_by_lab"] is True
    (log,) = (tmp_path / "logs").glob("vllm-*.log")  # only the candidate was launched
    assert "'max_num_seqs': 1" in log.read_text()  # vLLM's non-default args
    assert not http_ok(f"http://127.0.0.1:{log.stem.rsplit('-', 1)[1]}/health")  # stopped
    assert http_ok(vllm_server.base_url + "/health")  # the lent baseline is left running


def test_a_lent_baseline_takes_no_engine_table() -> None:
    plan = plan_from_dict({"recipes": ["vllm-enforce-eager"], "engine": {"dtype": "float32"}},
                          backend="vllm")  # fmt: skip
    with pytest.raises(ConfigError, match="already running"):
        run_served_lab(plan, None, None, backend=LatlabServerBackend(),
                       baseline_server=object())  # type: ignore[arg-type]  # fmt: skip


def test_plan_engine_table_is_checked_against_the_backend_it_launches() -> None:
    vllm_flags = {"recipes": ["vllm-enforce-eager"], "engine": {"enforce_eager": True}}
    assert plan_from_dict(vllm_flags, backend="vllm").engine == {"enforce_eager": True}
    with pytest.raises(ConfigError, match="no setting enforce_eager"):
        plan_from_dict(vllm_flags)  # latlab's engine has no such field
