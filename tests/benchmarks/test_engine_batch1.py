"""engine_batch1 runs end to end on the bundled model (each variant, probe, shape) and reports."""

from __future__ import annotations

import json

import pytest

from latlab.assets import bundled_model_path
from latlab.engine.kernels import decode_model

from .scripts import load_script


def test_smoke_on_the_bundled_model(tmp_path, capsys):
    if decode_model(wait=True).fn is None:
        pytest.skip(decode_model(wait=True).reason)
    model_dir = bundled_model_path()  # float32, and no transformers import needed
    bench = load_script("engine_batch1")
    out = tmp_path / "b1.json"
    bench.main([
        "--model-dir", str(model_dir), "--rounds", "1", "--steps", "1", "--context", "4",
        "--rows", "4", "--batches", "2", "--probe-mb", "8", "--breakdown", "--json", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["batches"]["2"]["seconds_per_step"]) == set(bench.VARIANTS)
    engines = result["batches"]["2"]["engines"]
    assert engines["native, huge pages"]["decode_layers"].startswith("native decode steps")
    assert engines["torch ops, 4 KiB pages"]["decode_layers"].endswith("native_decode=False")
    assert engines["native, huge pages, GEMV blocks"]["gemv_weights"].endswith("a thread)")
    assert engines["native, huge pages"]["gemv_weights"].startswith("the plan's own")
    shapes = result["shapes_bytes_per_s"]["4"]  # 4 shapes x (F.linear, GEMV on rows, on blocks)
    assert len(shapes) == 12 and sum(name.endswith("blocks") for name in shapes) == 4
    assert set(result["breakdown_ms"]) >= {"step", "native GEMVs alone", "probe, same bytes"}
    assert "of the limit" in capsys.readouterr().out
