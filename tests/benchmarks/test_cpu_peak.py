"""cpu_peak compiles its FMA loop and measures a plausible rate (no timing asserted)."""

from __future__ import annotations

from .scripts import load_script

cpu_peak = load_script("cpu_peak")


def test_fma_peak_builds_and_measures_a_plausible_rate(tmp_path):
    binary = cpu_peak.build(tmp_path)
    assert not isinstance(binary, str), binary
    one = cpu_peak.fma_peak_flop_s(1, iters=2_000_000, binary=binary)
    assert 1e8 < one < 1e13  # FLOP/s of one core: between a slow VM and no real CPU


def test_without_a_compiler_it_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_peak.shutil, "which", lambda name: None)
    assert cpu_peak.build(tmp_path) == "no C compiler (cc) on PATH"
