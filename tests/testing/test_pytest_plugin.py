"""SIGTERM to a pytest run stops the servers its fixtures started (latlab.testing.pytest_plugin)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

INNER = """
import pytest
from latlab.procs import ManagedProcess, ProcessSpec

@pytest.fixture
def server(tmp_path):
    proc = ManagedProcess(ProcessSpec(argv=["sleep", "300"], name="sleeper")).start()
    (tmp_path.parent.parent / "child.pid").write_text(str(proc.pid))
    yield proc
    proc.stop()

def test_waits(server):
    import time
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_sigterm_tears_fixtures_down(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    base = tmp_path / "base"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
            "latlab.testing.pytest_plugin", "--basetemp", str(base), str(tmp_path)]  # fmt: skip
    run = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pid_file = tmp_path / "child.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists():
        assert run.poll() is None and time.monotonic() < deadline, run.stdout.read().decode()
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert _alive(child)
    run.send_signal(signal.SIGTERM)
    out = run.communicate(timeout=60)[0].decode()
    assert run.returncode != 0
    assert not _alive(child), out
