"""The deployment contract: what a backend file provides, and what a launch gives back.

latlab starts inference servers as processes (``latlab serve``, ``vllm serve``; SGLang would be
one more backend file) and then measures them over HTTP like any other server. Every backend is
launched the same way by :func:`latlab.deploy.launcher.launch`:

0. the backend's pre-flight checks run (distributed launches: Ray head, versions, NCCL/gloo
   interfaces, ranks vs devices); a problem is a DeployError before anything starts;
1. a free loopback port is chosen (an occupied one is replaced by a free one, and said so);
2. the backend's command starts through :class:`latlab.procs.ManagedProcess` in its own process
   group, its output going to a log file in the run directory;
3. ``GET /health`` is polled; a server that exits or is not healthy in time fails with a
   :class:`DeployError` that carries the backend's own reason and the log's last 20 lines, and
   its whole process group is killed;
4. one streamed completion is sent, so the cold start reads *launch -> healthy -> first token*;
5. the engine's own facts are read from its log: version, KV cache capacity in tokens;
6. ``Deployment.stop()`` (also on error, Ctrl-C, and SIGTERM inside ``sigterm_as_exit``) stops
   the whole group: vLLM's ``EngineCore`` and ``Worker`` children included.

A backend is a small object with the :class:`Backend` methods below. It knows its command line,
its environment settings and its log format; it never starts or stops anything itself.
Standard library only: the bench client imports this without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from latlab.errors import LatlabError
from latlab.procs import ManagedProcess


class DeployError(LatlabError):
    """A server latlab launched could not start, become healthy or answer."""


class BackendNotFoundError(DeployError):
    """The backend's program is not installed where latlab looks for it."""


@dataclass(kw_only=True, slots=True)
class LaunchSettings:
    """What to launch: the model, the engine's flags and environment, where the log goes.

    ``engine_args`` are the backend's own settings by their field names (``max_num_seqs``,
    ``enable_prefix_caching``); the backend turns them into flags. ``env`` holds the
    environment variables the engine reads (``VLLM_CPU_KVCACHE_SPACE``), recorded like flags;
    a None value removes an inherited variable (recorded as null: "unset").
    """

    model: str
    served_model_name: str | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str | None] = field(default_factory=dict)  # None: unset it
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port
    log_dir: Path | None = None  # None: a file under the system temp dir
    health_timeout_s: float = 900.0  # vLLM on two busy cores can take minutes
    first_token_timeout_s: float = 300.0

    @property
    def name(self) -> str:
        """The model name clients send (the served name, else the model as given)."""
        return self.served_model_name or self.model


@dataclass(kw_only=True, slots=True)
class LaunchCommand:
    """A backend's command line and the environment additions it runs with."""

    argv: list[str]
    env: dict[str, str | None] = field(default_factory=dict)


@dataclass(kw_only=True, slots=True)
class LogFacts:
    """What the engine itself reported in its log."""

    version: str | None = None
    kv_cache_tokens: int | None = None  # the engine's own KV capacity
    max_model_len: int | None = None
    max_concurrency: float | None = None  # full-length requests the cache holds (vLLM)
    platform: str | None = None  # cpu, cuda, ... (vLLM's detected platform)
    error: str | None = None  # the engine's own reason, when it failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_model_len": self.max_model_len,
            "max_concurrency": self.max_concurrency,
            "platform": self.platform,
        }


@dataclass(kw_only=True, slots=True)
class ColdStart:
    """Seconds from launching the command to each milestone (one clock: perf_counter)."""

    healthy_s: float
    first_token_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        first = None if self.first_token_s is None else round(self.first_token_s, 3)
        return {"healthy_s": round(self.healthy_s, 3), "first_token_s": first}


def shell_line(argv: list[str], env: Mapping[str, str | None]) -> str:
    """``env -u UNSET NAME=VALUE cmd args`` as one pasteable line (``env`` only when needed)."""
    import shlex

    unset = [f"-u {shlex.quote(k)}" for k, v in sorted(env.items()) if v is None]
    assign = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()) if v is not None]
    prefix = (["env", *unset] if unset else []) + assign
    return " ".join([*prefix, shlex.join(argv)])


class Backend(Protocol):
    """One server program latlab can launch (one file per backend in this package)."""

    name: str  # "vllm", "latlab-server"

    def command(self, settings: LaunchSettings, port: int) -> LaunchCommand:
        """The argv and environment that serve ``settings.model`` on ``settings.host:port``."""

    def env_settings(self, settings: LaunchSettings) -> dict[str, str | None]:
        """The environment variables the engine reads, explicit ones and inherited ones."""

    def parse_log(self, text: str) -> LogFacts:
        """The engine's facts (and its reason, after a failure) from its log text."""

    def port_taken(self, text: str) -> bool:
        """True when the log says the port was already in use (then latlab tries another)."""

    def preflight(self, settings: LaunchSettings) -> list[str]:
        """Problems that would make this launch fail or hang, found before starting it."""


@dataclass(kw_only=True, slots=True)
class Deployment:
    """A launched, healthy server; ``stop()`` (or leaving the ``with`` block) ends it."""

    backend: str
    model: str  # the name clients send
    host: str
    port: int
    argv: list[str]
    engine_args: dict[str, Any]
    env: dict[str, str | None]
    log_path: Path | None
    cold_start: ColdStart
    facts: LogFacts
    process: ManagedProcess
    notes: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL (ends in /v1), what ``latlab bench --url`` takes."""
        return self.base_url + "/v1"

    def command_line(self) -> str:
        """The launch command as a shell line a user can paste (environment first)."""
        return shell_line(self.argv, self.env)

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> int | None:
        """Stop the whole process group; the exit code (idempotent)."""
        return self.process.stop()

    def to_dict(self) -> dict[str, Any]:
        """What a result file records about the server it measured."""
        return {
            "backend": self.backend,
            "model": self.model,
            "url": self.url,
            "command": self.command_line(),
            "argv": list(self.argv),
            "engine_args": dict(self.engine_args),
            "env": dict(self.env),
            "version": self.facts.version,
            "cold_start": self.cold_start.to_dict(),
            "engine": self.facts.to_dict(),
            "log_path": None if self.log_path is None else str(self.log_path),
            "notes": list(self.notes),
        }

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
