"""The base package: importable without torch, cheap to import, versioned."""

import subprocess
import sys

import latlab


def test_version_is_exposed():
    assert latlab.__version__.count(".") == 2


def test_import_does_not_pull_torch():
    code = "import sys, latlab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_public_name_raises_attribute_error():
    try:
        latlab.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
