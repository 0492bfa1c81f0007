"""attention_builds: times this tree's attention build beside another built module in one
process, rounds interleaved, and refuses a path that is not a built kernel."""

from __future__ import annotations

import json
import shutil

import pytest

from latlab.engine import kernels

from .scripts import load_script

attention_builds = load_script("attention_builds")


def test_a_path_that_is_not_a_build_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="not a built kernel module"):
        attention_builds.load_build(str(tmp_path / "missing.so"))


def test_two_builds_are_timed_in_interleaved_rounds(tmp_path, capsys):
    if kernels.paged_decode_attention(wait=False).fn is None:
        pytest.skip("native kernels not built")
    built = kernels.build_directory() / f"{kernels.build_directory().name}.so"
    library = tmp_path / built.name  # a copy: another build's module, as far as the loader sees
    shutil.copy(built, library)
    out = tmp_path / "attention.json"
    attention_builds.main(["--builds", f"current,{library}", "--contexts", "5,20",
                           "--layers", "2", "--batch", "3", "--cache-blocks", "16",
                           "--rounds", "2", "--kv-dtypes", "float32,bfloat16",
                           "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert list(result["builds"]) == ["current", str(library)]
    assert [(r["kv_dtype"], r["context"]) for r in result["rows"]] == [
        ("float32", 5), ("float32", 20), ("bfloat16", 5), ("bfloat16", 20)
    ]  # fmt: skip
    for row in result["rows"]:
        assert all(len(row["seconds"][name]) == 2 for name in result["builds"])
    assert "GB/s of KV read" in capsys.readouterr().out
