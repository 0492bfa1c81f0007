"""f32_gemm: the panel GEMM beside oneDNN and F.linear, and another build's panels beside this
tree's in the same rounds; a path that is not a build is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from latlab.engine import kernels

from .scripts import load_script

f32_gemm = load_script("f32_gemm")


def test_a_path_that_is_not_a_build_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="not a built kernel module"):
        f32_gemm.main(["--rows", "2", "--layers", "1", "--rounds", "1",
                       "--builds", str(tmp_path / "missing.so")])  # fmt: skip


def test_another_build_is_timed_beside_this_one(tmp_path, capsys):
    if kernels.f32_panels(wait=False)[0] is None:
        pytest.skip("the panel GEMM is not built here (needs AVX2 and FMA)")
    built = kernels.build_directory() / f"{kernels.build_directory().name}.so"
    library = tmp_path / built.name  # a copy: another build's module, as far as the loader sees
    shutil.copy(built, library)
    out = tmp_path / "gemm.json"
    f32_gemm.main(["--rows", "7", "--layers", "1", "--rounds", "2", "--threads", "1",
                   "--builds", str(library), "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())["rows"]["7"]
    assert list(result) == ["F.linear", "oneDNN-packed", "panels", f"panels@{built.stem}"]
    for figures in result.values():
        assert set(figures) == {"1536x768", "768x768", "6144x768", "768x3072", "all"}
        assert all(value > 0 for value in figures.values())
    assert f"panels / panels@{built.stem} in all:" in capsys.readouterr().out
