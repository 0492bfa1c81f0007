"""engine_profile: the native kernels' time comes from cProfile's table, per kernel and step,
the kernels' module told apart from every other built-in."""

from __future__ import annotations

import pytest

from .scripts import load_script

engine_profile = load_script("engine_profile")


def test_native_kernels_are_timed_per_step_and_other_builtins_left_out():
    stats = {  # pstats: (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)
        ("~", 0, "<built-in method latlab_paged_attention_ab12.f32_panel_linear>"): (
            98, 98, 2.0, 2.0, {}),
        ("~", 0, "<built-in method latlab_paged_attention_ab12.silu_mul>"): (24, 24, 0.1, 0.1, {}),
        ("~", 0, "<built-in method torch.matmul>"): (5, 5, 9.0, 9.0, {}),
        ("engine.py", 10, "step"): (2, 2, 3.0, 15.0, {}),
    }  # fmt: skip
    got = engine_profile.native_ms_per_step(stats, steps=2)
    assert list(got) == ["f32_panel_linear", "silu_mul"]  # largest first
    assert got == pytest.approx({"f32_panel_linear": 1000.0, "silu_mul": 50.0})


def test_a_profile_gives_plain_steps_and_what_lies_outside_the_native_kernels(tmp_path):
    from latlab.testing.random_model import TINY_TEST, save_random_llama

    save_random_llama(tmp_path / "tiny", TINY_TEST, dtype="float32", seed=0)
    model = str(tmp_path / "tiny")
    args = engine_profile.parse_args(
        ["--model-dir", model, "--batch", "2", "--context", "4", "--steps", "2", "--threads", "1"]
    )
    got = engine_profile.profile(args)
    assert got["plain_ms_per_step"] > 0 and got["wall_ms_per_step_profiled"] > 0
    native = sum(got["native_kernel_ms_per_step"].values())
    assert got["outside_native_kernels_ms_per_step"] == pytest.approx(
        got["plain_ms_per_step"] - native
    )
