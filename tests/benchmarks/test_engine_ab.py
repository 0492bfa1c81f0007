"""engine_ab: two sides (trees or the step ops) each in fresh processes, in turn, with their
rates, steps and (for the one-call step) phase figures."""

from __future__ import annotations

import json

import pytest

from .scripts import load_script

engine_ab = load_script("engine_ab")


@pytest.mark.parametrize("sides", [[], ["a=."], ["a=.", "b=.", "c=."]])
def test_anything_but_two_sides_is_refused(sides, capsys):
    with pytest.raises(SystemExit):
        engine_ab.parse_args([arg for side in sides for arg in ("--side", side)])
    assert "two --side LABEL=SRC[:step-ops] expected" in capsys.readouterr().err


def test_a_side_names_its_tree_and_whether_it_runs_the_step_ops():
    assert engine_ab.parse_side("old=/x/src:step-ops") == ("old", "/x/src", True)
    assert engine_ab.parse_side("new=.") == ("new", ".", False)
    with pytest.raises(SystemExit, match="LABEL=SRC"):
        engine_ab.parse_side("no-source")


def test_two_sides_alternate_in_fresh_processes(tmp_path, capsys):
    from latlab.testing.random_model import TINY_TEST, save_random_llama

    model = save_random_llama(tmp_path / "tiny", TINY_TEST, dtype="float32", seed=0)
    out = tmp_path / "ab.json"
    engine_ab.main(["--side", "ops=.:step-ops", "--side", "one=.", "--pairs", "1",
                    "--model-dir", str(model), "--batch", "5", "--output-len", "4",
                    "--runs", "1", "--json", str(out)])  # fmt: skip
    results = json.loads(out.read_text())["results"]
    assert results["ops"][0]["decode_batches"] == "native_decode=False"
    assert "barrier_ms" not in results["ops"][0]
    for side in results.values():
        assert side[0]["tok_s_median"] > 0 and side[0]["decode_step_ms_median"] > 0
    if results["one"][0]["decode_batches"].startswith("native"):  # a batch step here
        assert results["one"][0]["gemm_ms"] > 0
    assert "one / ops: " in capsys.readouterr().out
