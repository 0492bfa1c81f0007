"""Launch inference servers as processes latlab owns: ``latlab serve`` and ``vllm serve``.

The contract (what a backend provides, what a launch returns) is in :mod:`.contract`; the one
launch procedure in :mod:`.launcher`; each backend is one file (:mod:`.vllm`,
:mod:`.latlab_server`). Torch-free: the bench client drives launched servers over HTTP.

    from latlab.deploy import LaunchSettings, launch, make_backend

    with launch(make_backend("vllm"), LaunchSettings(model="/models/m")) as server:
        print(server.url, server.cold_start.first_token_s, server.facts.kv_cache_tokens)
"""

from __future__ import annotations

from latlab.deploy.contract import (
    Backend,
    BackendNotFoundError,
    ColdStart,
    DeployError,
    Deployment,
    LaunchCommand,
    LaunchSettings,
    LogFacts,
)
from latlab.deploy.launcher import launch

BACKENDS = ("vllm", "latlab-server")


def make_backend(name: str, *, vllm_cmd: str | None = None) -> Backend:
    """The backend called ``name``; BackendNotFoundError when its program is missing."""
    if name == "vllm":
        from latlab.deploy.vllm import VllmBackend

        return VllmBackend(vllm_cmd=vllm_cmd)
    if name == "latlab-server":
        from latlab.deploy.latlab_server import LatlabServerBackend

        return LatlabServerBackend()
    from latlab.errors import ConfigError

    raise ConfigError(f"unknown server backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendNotFoundError",
    "ColdStart",
    "DeployError",
    "Deployment",
    "LaunchCommand",
    "LaunchSettings",
    "LogFacts",
    "launch",
    "make_backend",
]
