"""Against a real ``vllm serve`` (vLLM CPU, the bundled model): launch, health, cold start, the
plan's flags and KV capacity, the engine-core children, a rejected flag. Shares the session's
one launch (tests/conftest.py); the stop is checked when the session ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from live_vllm import vllm_command_or_skip, vllm_test_plan

from latlab.deploy import DeployError, LaunchSettings, launch
from latlab.deploy.vllm import VllmBackend
from latlab.procs import group_members, http_ok

pytestmark = pytest.mark.slow


def test_launched_server_is_healthy_timed_and_logged(vllm_server: Any) -> None:
    assert http_ok(vllm_server.base_url + "/health")
    cold = vllm_server.cold_start
    assert 0 < cold.healthy_s <= cold.first_token_s
    assert vllm_server.facts.version == "0.32.0"
    assert vllm_server.facts.platform == "cpu"
    assert vllm_server.log_path.is_file()
    models = httpx.get(vllm_server.url + "/models", timeout=10).json()
    assert models["data"][0]["id"] == "tiny-llama"


def test_plan_flags_are_accepted_and_kv_capacity_is_the_predicted_one(vllm_server: Any) -> None:
    plan = vllm_test_plan()
    for key, value in plan.flags.items():
        assert vllm_server.engine_args[key] == value
    logged = vllm_server.facts.kv_cache_tokens
    assert logged is not None
    assert abs(logged - plan.kv_cache_tokens) <= plan.block_size  # within one block
    assert vllm_server.facts.max_model_len == plan.flags["max_model_len"]


def test_engine_core_runs_in_the_launched_process_group(vllm_server: Any) -> None:
    members = group_members(vllm_server.process.pid)
    titles = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid in members]
    assert len(members) >= 3
    assert any(b"EngineCore" in title for title in titles)


@pytest.mark.vllm
def test_a_flag_vllm_rejects_is_quoted_from_its_log_and_nothing_is_left(tmp_path: Path) -> None:
    backend = VllmBackend(vllm_command_or_skip())
    settings = LaunchSettings(model="unused", engine_args={"no_such_flag": 1}, log_dir=tmp_path)
    with pytest.raises(DeployError) as err:
        launch(backend, settings)
    message = str(err.value)
    assert message.startswith(
        "vllm failed to start: vLLM rejected its command line: unrecognized arguments: "
        "--no-such-flag 1"
    )
    log = next(tmp_path.glob("vllm-*.log")).read_text()
    assert "unrecognized arguments: --no-such-flag 1" in log
