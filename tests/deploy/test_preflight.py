"""Pre-flight checks for distributed vLLM launches: each known failure mode, one line each.

A multi-node Ray cluster is not available here; the checks run against what stands in for
each part: a closed loopback port for an unreachable head, an open one for a reachable head,
a fake /sys/class/net, and a fake interpreter that answers like Ray's node query.
"""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from latlab.deploy import preflight
from latlab.deploy.contract import LaunchSettings
from latlab.deploy.vllm import VllmBackend


def test_ray_addresses_are_parsed() -> None:
    assert preflight.ray_head("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert preflight.ray_head("ray://head.cluster:10001") == ("head.cluster", 10001)
    assert preflight.ray_head("head") == ("head", 6379)
    assert preflight.ray_head("auto") is None and preflight.ray_head(None) is None


def test_unreachable_head_is_one_line_with_what_to_check() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    problems = preflight.preflight(
        {"distributed_executor_backend": "ray", "tensor_parallel_size": 2},
        {"RAY_ADDRESS": f"127.0.0.1:{port}"},
        devices=1,
    )
    assert len(problems) == 1
    assert problems[0].startswith(f"cannot reach the Ray head at 127.0.0.1:{port}")
    assert "ray start --head" in problems[0]


def test_reachable_head_passes_and_ranks_beyond_one_node_need_ray() -> None:
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        ray_args = {"distributed_executor_backend": "ray", "tensor_parallel_size": 8}
        assert preflight.preflight(ray_args, {"RAY_ADDRESS": address}, devices=1) == []
    problems = preflight.preflight({"tensor_parallel_size": 4, "pipeline_parallel_size": 2},
                                   {}, devices=4)  # fmt: skip
    assert problems == [
        "tensor x pipeline parallel = 8 ranks but this node holds 4 (GPUs, or CPU cores on vLLM "
        "CPU); use --distributed-executor-backend ray across nodes"
    ]


def test_interface_names_must_exist_on_this_node(tmp_path: Path) -> None:
    for name in ("lo", "eth0", "ib0"):
        (tmp_path / name).mkdir()
    ok = {"NCCL_SOCKET_IFNAME": "eth", "GLOO_SOCKET_IFNAME": "^docker,lo"}
    assert preflight.interface_problems(ok, tmp_path) == []
    bad = preflight.interface_problems({"NCCL_SOCKET_IFNAME": "ens5"}, tmp_path)
    assert bad == [
        "NCCL_SOCKET_IFNAME=ens5: this node has no interface ens5 (it has eth0, ib0, lo)"
    ]


def test_every_node_must_run_this_nodes_vllm_version(tmp_path: Path) -> None:
    python = tmp_path / "python"
    answer = {"head": "0.11.0", "worker-1": "0.11.0", "worker-2": "0.10.2", "worker-3": None}
    python.write_text(f"#!/bin/sh\necho '{json.dumps(answer)}'\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    versions = preflight.node_versions(str(python), {})
    assert preflight.version_problems(versions, "0.11.0") == [
        "Ray node worker-2 runs vLLM 0.10.2, this node 0.11.0",
        "Ray node worker-3 runs vLLM not installed, this node 0.11.0",
    ]
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'ConnectionError: no Ray cluster' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="ConnectionError: no Ray cluster"):
        preflight.node_versions(str(broken), {})


def test_single_rank_vllm_launch_checks_only_interfaces(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NCCL_SOCKET_IFNAME", raising=False)
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    backend = VllmBackend([str(tmp_path / "vllm")])
    assert backend.preflight(LaunchSettings(model="m")) == []
    settings = LaunchSettings(model="m", env={"NCCL_SOCKET_IFNAME": "no-such-if0"})
    assert backend.preflight(settings)[0].startswith("NCCL_SOCKET_IFNAME=no-such-if0: ")


def test_vllms_interpreter_is_found_beside_its_command(tmp_path: Path) -> None:
    (tmp_path / "python").write_text("")
    assert VllmBackend([str(tmp_path / "vllm-cpu")]).python() == str(tmp_path / "python")
    assert VllmBackend(["/opt/v/bin/python3", "shim.py"]).python() == "/opt/v/bin/python3"
    assert VllmBackend([str(tmp_path / "sub" / "vllm")]).python() is None
