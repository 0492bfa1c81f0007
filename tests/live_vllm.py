"""Helpers for the live vLLM tests: find vLLM (or skip), and the plan the shared server runs.

Without vLLM the live tests skip with the reason, except under ``make test``
(``LATLAB_REQUIRE_VLLM=1``), where a missing vLLM is a failure: CI installs it first.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

VLLM_KV_BYTES = "1GiB"
VLLM_CONTEXT = 2048


def vllm_command_or_skip() -> list[str]:
    """The vLLM command latlab would use here; skip (or fail under make test) without one."""
    from latlab.deploy.contract import BackendNotFoundError
    from latlab.deploy.vllm import find_vllm

    try:
        return find_vllm()
    except BackendNotFoundError as exc:
        if os.environ.get("LATLAB_REQUIRE_VLLM") == "1":
            pytest.fail(f"LATLAB_REQUIRE_VLLM=1 but {exc}")
        pytest.skip(str(exc))


def vllm_test_plan() -> Any:
    from latlab.assets import bundled_model_path
    from latlab.plan.vllm import plan_vllm

    return plan_vllm(bundled_model_path(), device="cpu", kv_cache_bytes=VLLM_KV_BYTES,
                     context=VLLM_CONTEXT)  # fmt: skip
