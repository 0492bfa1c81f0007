"""``latlab bench --backend vllm / latlab-server``: launched, measured over HTTP, stopped."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from live_vllm import vllm_command_or_skip

from latlab.cli import _register_commands, main
from latlab.cli.bench import _backends, _per_backend
from latlab.errors import ConfigError, LatlabError

SMALL = ["--num-requests", "3", "--concurrency", "1", "--input-len", "8", "--output-len", "6",
         "--warmup", "1", "--no-progress"]  # fmt: skip


def _bench(*args: str) -> tuple[int, str]:
    _register_commands()
    result = CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_backend_names_and_lists() -> None:
    assert _backends("transformers") == ["transformers"] and _backends("latlab") == ["latlab"]
    assert _backends("vllm") == ["vllm"]
    assert _backends("vllm, latlab-server") == ["vllm", "latlab-server"]
    for bad in ("sglang", "latlab,vllm", ""):
        with pytest.raises(ConfigError, match="or servers to launch: vllm, latlab-server"):
            _backends(bad)
    with pytest.raises(ConfigError, match="names a server twice"):
        _backends("vllm,vllm")


def test_settings_route_to_one_backend_by_prefix() -> None:
    settings = {"max_num_seqs": 8, "vllm:enforce_eager": True, "latlab-server:num_threads": 1}
    assert _per_backend(settings, ["vllm", "latlab-server"]) == {
        "vllm": {"max_num_seqs": 8, "enforce_eager": True},
        "latlab-server": {"max_num_seqs": 8, "num_threads": 1},
    }
    with pytest.raises(ConfigError, match="names backend 'sglang', which is not being launched"):
        _per_backend({"sglang:x": 1}, ["vllm"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "vllm", "--url", "http://127.0.0.1:9/v1"], "launches its own server"),
        (["--engine-env", "A=1"], "--engine-env applies to launched servers"),
        (["--backend", "latlab-server", "--engine-env", "A"], "must look like NAME=VALUE"),
        (["--backend", "vllm", "--vllm-cmd", "/nowhere/vllm"], "vLLM not found"),
        (["--compare-model", "/m/pruned"], "--compare-model launches servers"),
        (["--backend", "vllm", "--model", "/a/m", "--compare-model", "/b/m"], "distinct folder"),
    ],
)
def test_bad_server_options_fail_in_one_line(args: list[str], message: str) -> None:
    with pytest.raises(LatlabError, match=message) as err:
        _bench(*args, *SMALL)
    assert "\n" not in str(err.value)


def test_each_model_is_launched_on_each_server_and_labelled(tmp_path: Path) -> None:
    import sys

    from latlab.cli.bench import _server_runs

    opts = {"engine_arg": ("vllm:dtype=float32",), "engine_env": (), "vllm_cmd": sys.executable}
    runs = _server_runs(opts, ["vllm", "latlab-server"], ["/m/tiny", "/m/pruned3/"], tmp_path)
    assert [(r.label, r.settings.model) for r in runs] == [
        ("vllm-tiny", "/m/tiny"), ("latlab-server-tiny", "/m/tiny"),
        ("vllm-pruned3", "/m/pruned3/"), ("latlab-server-pruned3", "/m/pruned3/"),
    ]  # fmt: skip
    assert runs[2].settings.engine_args == {"dtype": "float32"}
    assert runs[3].settings.engine_args == {}
    alone = _server_runs(opts, ["vllm"], ["/m/tiny"], tmp_path)
    assert [r.label for r in alone] == ["vllm"]


@pytest.mark.slow
def test_latlab_server_is_launched_measured_recorded_and_stopped(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    code, text = _bench("--backend", "latlab-server", "--engine-arg", "max_num_seqs=4",
                        "--json", str(out), "--run-dir", str(tmp_path / "run"), *SMALL)  # fmt: skip
    assert code == 0, text
    server = json.loads(out.read_text())["target"]["server"]
    assert server["backend"] == "latlab-server"
    assert server["engine_args"] == {"max_num_seqs": 4}
    assert "--max-num-seqs 4" in server["command"]
    assert 0 < server["cold_start"]["healthy_s"] <= server["cold_start"]["first_token_s"]
    assert server["engine"]["kv_cache_tokens"] > 0
    assert Path(server["log_path"]).parent == tmp_path / "run"
    assert (tmp_path / "run" / "latlab-server.json").is_file()
    assert _port_closed(server["url"])


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_and_latlab_server_compared_in_one_command(tmp_path: Path) -> None:
    vllm = shlex.join(vllm_command_or_skip())
    out = tmp_path / "cmp.json"
    code, text = _bench(
        "--backend", "vllm,latlab-server", "--vllm-cmd", vllm,
        "--engine-arg", "vllm:enforce_eager=true", "--engine-arg", "vllm:dtype=float32",
        "--engine-arg", "max_num_seqs=4",
        "--engine-env", "vllm:VLLM_CPU_KVCACHE_SPACE=1",
        "--json", str(out), "--run-dir", str(tmp_path / "run"), *SMALL,
    )  # fmt: skip
    assert code == 0, text
    assert "servers compared" in text
    vllm_run = json.loads((tmp_path / "cmp.vllm.json").read_text())
    latlab_run = json.loads((tmp_path / "cmp.latlab-server.json").read_text())
    server = vllm_run["target"]["server"]
    assert server["version"] == "0.32.0"
    assert server["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert server["engine_args"] == {"max_num_seqs": 4, "enforce_eager": True, "dtype": "float32"}
    assert server["cold_start"]["first_token_s"] > 0
    assert latlab_run["target"]["server"]["engine_args"] == {"max_num_seqs": 4}
    for run in (vllm_run, latlab_run):
        assert run["levels"][0]["summary"]["completed"] == 3
        assert _port_closed(run["target"]["server"]["url"])


def _port_closed(url: str) -> bool:
    from latlab.procs import http_ok

    return not http_ok(url.removesuffix("/v1") + "/health")
