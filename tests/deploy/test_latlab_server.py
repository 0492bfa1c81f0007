"""The latlab-server backend: EngineConfig settings as `latlab serve` flags, its log read back."""

from __future__ import annotations

import sys

import pytest

from latlab import __version__
from latlab.deploy.contract import LaunchSettings
from latlab.deploy.latlab_server import LatlabServerBackend, serve_flags
from latlab.errors import ConfigError


def test_settings_use_serve_flags_where_they_exist_and_engine_arg_otherwise() -> None:
    settings = {"max_num_seqs": 4, "num_threads": 1, "enable_prefix_caching": False,
                "compile": True, "kv_cache_dtype": "bfloat16", "packed_linear": None}  # fmt: skip
    argv = serve_flags(settings)
    assert argv == ["--max-num-seqs", "4", "--threads", "1", "--no-prefix-caching", "--compile",
                    "--engine-arg", "kv_cache_dtype=bfloat16", "--engine-arg",
                    "packed_linear=none"]  # fmt: skip
    assert serve_flags({"enable_prefix_caching": True, "compile": False}) == []
    with pytest.raises(ConfigError, match="set by latlab for every launch"):
        serve_flags({"port": 1})


def test_command_is_this_interpreters_latlab_serve() -> None:
    settings = LaunchSettings(model="/m", served_model_name="m", engine_args={"max_num_seqs": 2})
    argv = LatlabServerBackend().command(settings, 9000).argv
    assert argv == [sys.executable, "-m", "latlab", "serve", "/m", "--host", "127.0.0.1",
                    "--port", "9000", "--served-model-name", "m",
                    "--max-num-seqs", "2"]  # fmt: skip


def test_ready_line_gives_the_kv_capacity_and_cli_errors_the_reason() -> None:
    backend = LatlabServerBackend()
    ready = ("latlab serve: ready at http://127.0.0.1:9000/v1 (model 'm', engine and server up "
             "in 3.2 s; KV cache size: 131,072 tokens in 8,192 blocks of 16)")  # fmt: skip
    facts = backend.parse_log(ready + "\n")
    assert (facts.kv_cache_tokens, facts.version, facts.error) == (131_072, __version__, None)
    error = "latlab: error: the latlab engine has no setting bogus; its settings: ..."
    assert backend.parse_log(error).error == error.removeprefix("latlab: error: ")
    assert backend.port_taken("latlab: error: cannot listen on 127.0.0.1:9000 (Address "
                              "already in use); pick another --port")  # fmt: skip
    assert backend.preflight(LaunchSettings(model="m")) == []
