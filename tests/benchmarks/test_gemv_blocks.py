"""gemv_blocks: rows against blocks per shape, in one process; malformed shapes are refused."""

from __future__ import annotations

import json

import pytest

from latlab.engine.kernels import small_linear

from .scripts import load_script

gemv_blocks = load_script("gemv_blocks")


@pytest.mark.parametrize("shapes", ["8x30", "6x32", "8by32", "x32"])
def test_shapes_that_are_not_whole_blocks_are_refused(shapes):
    with pytest.raises(SystemExit, match="NxK with N a multiple of 4 and K of 16"):
        gemv_blocks.main(["--shapes", shapes])


def test_each_shape_is_read_as_rows_and_as_blocks(tmp_path, capsys):
    if small_linear(wait=True).fn is None:
        pytest.skip(small_linear(wait=True).reason)
    out = tmp_path / "blocks.json"
    gemv_blocks.main(["--shapes", "8x32,16x1024", "--layers", "2", "--rounds", "2",
                      "--threads", "1", "--rows", "3", "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert list(result["shapes"]) == ["8x32", "16x1024"] and result["rows"] == 3
    for figures in result["shapes"].values():
        assert figures["rows_gb_s"] > 0 and figures["blocks_gb_s"] > 0
        ratio = figures["blocks_gb_s"] / figures["rows_gb_s"]
        assert figures["blocks_over_rows"] == pytest.approx(ratio)
    assert result["shapes"]["16x1024"]["row_bytes"] == 4096
    assert "blocks/rows" in capsys.readouterr().out
