"""``latlab prune`` and ``latlab distill`` as a user runs them: one-line errors for every bad
input the issue names, and Ctrl-C during distillation that keeps a checkpoint to resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latlab.cli import run
from latlab.testing.random_model import LlamaShape, save_random_llama

_CLI = "import sys; from latlab.cli import run; run(sys.argv[1:])"
SMALL = LlamaShape(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
)


def _in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    try:
        run(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("latlab: ")]
    assert len(errors) == 1 and errors[0].startswith("latlab: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in errors[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_llama(tmp_path_factory.mktemp("m") / "model", SMALL)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import inspect

    path = tmp_path_factory.mktemp("c") / "corpus.txt"
    path.write_text(inspect.getdoc(inspect) * 20, encoding="utf-8")
    return path


def test_prune_writes_a_smaller_model(model_dir: Path, corpus: Path, tmp_path: Path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", str(model_dir), "--out", str(out), "--layers", "1", "--corpus", str(corpus)]
    code, stdout, stderr = _in_process(capsys, *args, "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["after"]["num_hidden_layers"] == 3 and len(report["layers"]["removed"]) == 1
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    again = _in_process(capsys, "prune", str(model_dir), "--out", str(out), "--layers", "2",
                        "--corpus", str(corpus))  # fmt: skip
    _one_line_error(again[0], again[2], "exists and is not empty", "--overwrite")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3


def test_prune_count_that_leaves_no_layer(model_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _in_process(
        capsys, "prune", str(model_dir), "--out", str(tmp_path / "x"), "--layers", "4"
    )
    _one_line_error(code, err, "cannot remove 4 of the model's 4 layers")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("content", "needle"), [(b"", "is empty"), (b"\x89PNG\r\n\x1a\n\0\0", "is not text")]
)
def test_empty_or_binary_corpus(
    model_dir: Path, tmp_path: Path, content: bytes, needle: str, capsys
):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    code, _, err = _in_process(
        capsys, "distill", str(model_dir), "--out", str(tmp_path / "s"), "--corpus", str(bad)
    )
    _one_line_error(code, err, needle, str(bad))
    assert not (tmp_path / "s").exists()


def test_student_larger_than_teacher(model_dir: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _in_process(
        capsys, "distill", str(model_dir), "--out", str(tmp_path / "s"), "--layers", "5"
    )
    _one_line_error(code, err, "larger than its teacher")


def test_ctrl_c_keeps_a_checkpoint_and_resume_finishes(
    model_dir: Path, corpus: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "student"
    args = ["distill", str(model_dir), "--out", str(out), "--layers", "2", "--corpus",
            str(corpus), "--batch-size", "2", "--seq-len", "32",
            "--checkpoint-every", "1h"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, *args, "--steps", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # generous: a loaded 2-core machine takes a while to import torch and load the model
        deadline = time.monotonic() + 240
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "distill step" in line or not line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("latlab: ")]
    assert len(lines) == 1 and "--resume" in lines[0] and "Traceback" not in err
    assert (out / "checkpoint" / "state.json").is_file()
    step = json.loads((out / "checkpoint" / "state.json").read_text())["state"]["step"]
    assert step >= 1
    refused = _in_process(capsys, *args, "--steps", str(step + 2))
    _one_line_error(refused[0], refused[2], "--resume")
    code, stdout, stderr = _in_process(
        capsys, *args, "--steps", str(step + 2), "--resume", "--json"
    )
    assert code == 0, stderr
    assert json.loads(stdout)["training"]["step"] == step + 2
    assert (out / "model.safetensors").is_file() and not (out / "checkpoint").exists()
