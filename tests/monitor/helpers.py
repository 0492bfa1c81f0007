"""Helpers for the monitoring tests: the latlab CLI as a real process, Prometheus present?"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from latlab.procs import ManagedProcess, ProcessSpec

FIXTURES = Path(__file__).parent / "fixtures"
CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"

needs_prometheus = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("promtool")),
    reason="prometheus/promtool not installed (bash scripts/setup_services.sh installs them)",
)


def latlab_process(name: str, args: list[str], log_dir: Path) -> ManagedProcess:
    """``latlab ARGS`` as a managed process group (stopped whole by the caller)."""
    spec = ProcessSpec(argv=[sys.executable, "-c", CLI, *args], name=name,
                       log_path=log_dir / f"{name}.log")  # fmt: skip
    return ManagedProcess(spec)


def start_serve(log_dir: Path, port: int, *extra: str, name: str = "serve") -> ManagedProcess:
    """The bundled model behind ``latlab serve`` on ``port``; waits for /health."""
    proc = latlab_process(name, ["serve", "--port", str(port), "--max-num-seqs", "4",
                                 "--kv-cache-bytes", "8MiB", "--served-model-name", "tiny",
                                 "--threads", "1", *extra], log_dir)  # fmt: skip
    proc.start()
    proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=180)
    return proc
