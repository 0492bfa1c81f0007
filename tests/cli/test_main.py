"""The ``latlab`` entry point: version, help, and one-line errors without tracebacks."""

import subprocess
import sys

import pytest

from latlab import __version__
from latlab.cli import run


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from latlab.cli import run; run(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_version_prints_the_package_version(capsys):
    run(["--version"])
    assert __version__ in capsys.readouterr().out


def test_bad_flag_in_process_exits_two(capsys):
    with pytest.raises(SystemExit) as exc:
        run(["--bogus"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("latlab: error:")


def test_unknown_flag_is_one_line_and_non_zero():
    result = _run_cli("--no-such-flag")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--no-such-flag" in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_command_is_one_line_and_non_zero():
    result = _run_cli("frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_only_registered_verbs():
    from latlab.cli import _COMMAND_MODULES

    result = _run_cli("--help")
    assert result.returncode == 0
    for verb in _COMMAND_MODULES:
        assert verb in result.stdout
