"""The latlab-server backend: ``latlab serve`` launched as its own process, like vLLM is.

``latlab bench --backend latlab`` runs the engine in-process; this backend puts the same engine
behind its HTTP server in a separate process, so ``latlab serve`` and ``vllm serve`` are
launched, timed and measured by the very same code. Engine settings are EngineConfig field
names; each goes as ``latlab serve``'s own flag where it has one, else as ``--engine-arg``.
"""

from __future__ import annotations

import re
import sys

from latlab.deploy.contract import LaunchCommand, LaunchSettings, LogFacts
from latlab.deploy.flags import setting_name, to_flags
from latlab.errors import ConfigError

# EngineConfig field -> latlab serve flag, where the flag is not simply the field's name.
_RENAMED = {"num_threads": "threads"}
_OWN_FLAGS = {"dtype", "device", "block_size", "kv_cache_bytes", "kv_cache_memory_fraction",
              "max_num_seqs", "max_num_batched_tokens", "max_model_len", "max_waiting",
              "num_speculative_tokens", "speculative_max_batch", "prompt_lookup_max",
              "prompt_lookup_min", "seed", "num_threads"}  # fmt: skip
_RESERVED = {"model", "host", "port", "served_model_name"}

# The ready line: "latlab serve: ready at URL (model 'm', engine and server up in 3.2 s;
# KV cache size: 131,072 tokens in 8,192 blocks of 16)".
_CAPACITY = re.compile(r"latlab serve: ready at .*KV cache size: ([\d,]+) tokens")
_CLI_ERROR = re.compile(r"^latlab: error: (.+)$")


def serve_flags(engine_args: dict[str, object]) -> list[str]:
    """EngineConfig settings as ``latlab serve`` flags (``--engine-arg`` for the rest)."""
    own: dict[str, object] = {}
    rest: list[str] = []
    for key, value in engine_args.items():
        name = setting_name(key)
        if name in _RESERVED:
            raise ConfigError(f"--engine-arg {name} is set by latlab for every launch")
        if name == "enable_prefix_caching":
            rest += [] if value else ["--no-prefix-caching"]
        elif name == "compile":
            rest += ["--compile"] if value else []
        elif name in _OWN_FLAGS:
            own[_RENAMED.get(name, name)] = value
        else:
            rest += ["--engine-arg", f"{name}={_text(value)}"]
    return to_flags(own) + rest


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


class LatlabServerBackend:
    """``python -m latlab serve MODEL --host H --port P --served-model-name N ...``."""

    name = "latlab-server"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def command(self, settings: LaunchSettings, port: int) -> LaunchCommand:
        argv = [self.python, "-m", "latlab", "serve", settings.model, "--host", settings.host,
                "--port", str(port), "--served-model-name", settings.name]  # fmt: skip
        return LaunchCommand(argv=argv + serve_flags(dict(settings.engine_args)))

    def env_settings(self, settings: LaunchSettings) -> dict[str, str | None]:
        return dict(settings.env)

    def parse_log(self, text: str) -> LogFacts:
        from latlab import __version__  # the launched server is this very install

        facts = LogFacts(platform="cpu", version=__version__)
        for line in text.splitlines():
            if m := _CAPACITY.search(line):
                facts.kv_cache_tokens = int(m.group(1).replace(",", ""))
            elif m := _CLI_ERROR.match(line.strip()):
                facts.error = m.group(1)
        return facts

    def port_taken(self, text: str) -> bool:
        return "cannot listen on" in text and "in use" in text

    def preflight(self, settings: LaunchSettings) -> list[str]:
        return []  # one process on this machine: nothing to check before starting it
