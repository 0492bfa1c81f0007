"""What a measurement was taken on: one description shared by bench results and lab reports.

Imports no torch: a remote benchmark must not pay for it. When torch is already loaded (an
in-process model), its thread count is recorded too, since it changes every CPU figure.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

_PACKAGES = ("latlab", "httpx", "torch", "transformers", "tokenizers", "numpy")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    """GPU names without importing torch (a remote benchmark must not pay for it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if shutil.which("nvidia-smi"):
        try:
            cmd = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


def _packages() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _threads() -> dict[str, Any]:
    """CPUs this process may use and the thread settings that change CPU latency."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out: dict[str, Any] = {"usable_cpus": usable}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        if os.environ.get(var):
            out[var] = os.environ[var]
    return out


def environment() -> dict[str, Any]:
    """Python, platform, CPU model and cores, host, usable CPUs and thread settings, GPUs,
    package versions, torch threads if loaded."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "host": platform.node(),
        "threads": _threads(),
        "gpus": _gpus(),
        "packages": _packages(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
    return env
