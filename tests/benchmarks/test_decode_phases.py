"""decode_phases: refuses batches the native batch step does not run, averages phases per decode
step and thread, and runs end to end on a small model where the batch step exists."""

from __future__ import annotations

import json

import pytest

from latlab.testing.random_model import TINY_TEST, save_random_llama

from .scripts import batch_step_dtype, load_script

decode_phases = load_script("decode_phases")


@pytest.mark.parametrize("batch", ["4", "65"])
def test_batches_outside_the_native_step_are_refused(batch, capsys):
    with pytest.raises(SystemExit):
        decode_phases.parse_args(["--batch", batch])
    assert "the native batch step runs 5-64 rows" in capsys.readouterr().err


def test_phases_are_per_decode_step_and_thread_medians_over_rounds():
    rounds = [
        {"phase_s": {"qkv": 0.4, "attention": 0.8}, "step_s": 1.1, "forward_s": 1.0,
         "steps": 11, "tok_s": 100.0},
        {"phase_s": {"qkv": 0.6, "attention": 1.0}, "step_s": 1.3, "forward_s": 1.2,
         "steps": 11, "tok_s": 300.0},
        {"phase_s": {"qkv": 0.2, "attention": 0.9}, "step_s": 1.2, "forward_s": 1.1,
         "steps": 11, "tok_s": 200.0},
    ]  # fmt: skip
    got = decode_phases.per_step(rounds, threads=2, decode_steps=10)
    assert got["phases_ms"] == pytest.approx({"qkv": 20.0, "attention": 45.0})  # 0.4 s / 2 / 10
    assert got["step_ms"] == pytest.approx(1.2 / 11 * 1e3)
    assert got["forward_ms"] == pytest.approx(1.1 / 11 * 1e3)
    assert got["tok_s"] == 200.0


def test_a_run_writes_every_phase_of_every_plan(tmp_path, capsys):
    dtype = batch_step_dtype()
    model_dir = save_random_llama(tmp_path / "tiny", TINY_TEST, dtype="bfloat16", seed=1)
    out = tmp_path / "phases.json"
    decode_phases.main(["--model-dir", str(model_dir), "--dtype", dtype, "--batch", "5",
                        "--output-len", "4", "--rounds", "2", "--quantization", "none",
                        "--kv-cache-dtypes", "auto,int8", "--block-sizes", "16,32",
                        "--json", str(out)])  # fmt: skip
    plans = json.loads(out.read_text())["plans"]
    assert [(p["plan"]["kv_cache_dtype"], p["plan"]["block_size"]) for p in plans] == [
        ("auto", 16), ("auto", 32), ("int8", 16), ("int8", 32)]  # fmt: skip
    for plan in plans:
        phases = plan["phases_ms"]
        assert phases["quantize"] == 0.0  # bf16 or float32 weights: nothing to quantize
        assert all(phases[p] > 0 for p in ("qkv", "attention", "o", "gate_up", "down", "head"))
        assert plan["kv_mb_per_step"] > 0 and plan["gemm_probe_ms"] > 0
    out = capsys.readouterr().out
    assert "outside the forward pass" in out and "GEMMs at " in out
    # the rounds interleave the plans: round 1 of every plan before any plan's round 2
    assert out.index("round 1/2, none weights, int8 KV cache, blocks of 32") < out.index(
        "round 2/2, none weights, auto KV cache, blocks of 16")  # fmt: skip
    assert all(len(p["rounds"]) == 2 for p in plans)
    flops = plans[0]["gemm_gflop_per_step"]
    assert set(flops) == {"qkv", "o", "gate_up", "down", "head"}


def test_each_gemm_phase_counts_its_layers_flops_at_the_steps_rows(tmp_path):
    from latlab.engine import LLM
    from latlab.engine.roofline import linear_layers

    model_dir = save_random_llama(tmp_path / "tiny", TINY_TEST, dtype="float32", seed=1)
    model = LLM(str(model_dir), dtype="float32", kv_cache_bytes=1 << 22).engine.runner.model
    flops = decode_phases.gemm_flops(model, batch=8)
    every = sum(2 * 8 * m.in_features * m.out_features for m in linear_layers(model))
    assert sum(flops.values()) == every
    config = json.loads((model_dir / "config.json").read_text())
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    assert flops["head"] == 2 * 8 * hidden * config["vocab_size"]
    assert flops["gate_up"] == 2 * 8 * layers * hidden * 2 * config["intermediate_size"]
    assert flops["down"] == flops["gate_up"] / 2


def test_the_gemms_are_put_against_the_fma_peak_when_it_was_measured():
    line = decode_phases.gemm_against_peak(150.0, 200.0)
    assert "150.0 GFLOP/s: 75% of the float32 FMA peak (200.0 GFLOP/s" in line
    assert "FMA peak not measured" in decode_phases.gemm_against_peak(150.0, None)
