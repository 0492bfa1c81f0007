"""engine_speed's anchor runner leaves nothing behind, and its roofline arithmetic holds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from latlab.procs import group_members

from .scripts import batch_step_dtype, load_script

engine_speed = load_script("engine_speed")

# Like vLLM's offline script: write the result, leave a worker running, leave with os._exit.
_LIKE_VLLM = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1] + ".pid", "w").write(str(child.pid))
open(sys.argv[1], "w").write('{"throughput": [{"batch": 1, "tok_per_s_median": 5.0}]}')
os._exit(0)
"""


def test_anchor_run_returns_its_json_and_stops_the_children_it_left(tmp_path):
    out = tmp_path / "anchor.json"
    got = engine_speed.run_anchor([sys.executable, "-c", _LIKE_VLLM, str(out)], out, {}, 60)
    assert got == {"throughput": [{"batch": 1, "tok_per_s_median": 5.0}]}
    child = Path(f"/proc/{Path(f'{out}.pid').read_text()}/stat")
    assert not child.exists() or ") Z " in child.read_text()  # gone (or a zombie)


def test_anchor_failure_is_reported_not_raised(tmp_path, capsys):
    out = tmp_path / "never.json"
    got = engine_speed.run_anchor([sys.executable, "-c", "raise SystemExit(4)"], out, {}, 60)
    assert got is None
    assert "rc=4" in capsys.readouterr().out


def test_anchor_timeout_stops_the_group(tmp_path):
    out = tmp_path / "slow.json"
    slow = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpgid(0))); time.sleep(600)"
    pgid_file = tmp_path / "pgid"
    argv = [sys.executable, "-c", slow, str(pgid_file)]
    assert engine_speed.run_anchor(argv, out, {}, 5.0) is None
    assert group_members(int(pgid_file.read_text())) == []


def test_vllm_binding_all_is_spelled_as_the_core_list_vllm_parses():
    cores = sorted(os.sched_getaffinity(0))
    assert engine_speed.vllm_bind("all") == ",".join(map(str, cores))
    assert engine_speed.vllm_bind("auto") == "auto"


def test_goals_anchor_on_vllms_fastest_run_and_state_the_gemm_ceiling():
    result = {
        "vllm": {"best": {64: (200.0, "float32 bind=all")}},
        "roofline": [
            {
                "engine": "latlab", "batch": 64, "tok_s": 250.0, "achieved_flop_s": 50e9,
                "gemm_flop_s": 62.5e9, "bandwidth_limit_tok_s": 2500.0,
                "gemm_limit_tok_s": 312.5,
            }
        ],
    }  # fmt: skip
    goal = engine_speed.goals(result)["latlab@64"]
    assert goal["x_vllm"] == 1.25 and goal["vllm_dtype"] == "float32 bind=all"
    assert goal["gemm_fraction"] == 0.8 and goal["x_vllm_at_gemm_rate"] == 1.5625


def test_roofline_counts_the_prompt_tokens_flops_but_reads_weights_once_a_step(monkeypatch):
    """The timed run prefills the prompts: their FLOPs are work done (and a ceiling's cost),
    the weight bytes are not (read once per step either way)."""
    import argparse
    import types

    from latlab.engine import roofline as rl

    cost = types.SimpleNamespace(flops_per_token=1e9, bytes_per_token=1e8, as_dict=dict)
    monkeypatch.setattr(rl, "decode_cost", lambda model, **kw: cost)
    engine = types.SimpleNamespace(runner=types.SimpleNamespace(model=None), kv_bytes_per_token=1)
    args = argparse.Namespace(prompt_len=8, output_len=32)
    result = {
        "bandwidth_bytes_s": [1e10],
        "throughput": [{"batch": 64, "engines": {"e": {"tok_s_median": 100.0}},
                        "gemm_flop_s": {"e": 250e9}}],
    }  # fmt: skip
    row = engine_speed.roofline(args, {"e": types.SimpleNamespace(engine=engine)}, result)[0]
    assert row["achieved_flop_s"] == 125e9  # 100 output tok/s x 40/32 tokens through
    assert row["gemm_limit_tok_s"] == 200.0  # 250 GFLOP/s / (1.25 x 1 GFLOP)
    assert row["bandwidth_limit_tok_s"] == 100.0  # bytes per step: no prompt factor


def test_peak_lines_put_both_engines_and_the_goal_against_the_fma_peak(capsys):
    result = {
        "fma_peak_flop_s": 200e9, "threads": 2,
        "vllm": {"best": {"64": [100.0, "float32 bind=all"]}},
        "roofline": [{"engine": "latlab", "batch": 64, "tok_s": 120.0,
                      "achieved_flop_s": 120e9, "gemm_flop_s": 150e9}],
    }  # fmt: skip
    engine_speed.peak_lines(result, 64)
    out = capsys.readouterr().out
    assert "latlab: 120.0 GFLOP/s = 60% of peak (its GEMMs alone 75%)" in out
    assert "vLLM (float32 bind=all): 100.0 GFLOP/s = 50% of peak" in out
    assert "1.5x vLLM in float32 needs 150.0 GFLOP/s = 75% of peak" in out


def test_the_gemms_share_of_steps_weighs_each_run_by_its_forward_time():
    runs = [
        (100.0, 50.0, {"steps": 10, "step_s": 1.0, "forward_s": 0.9, "gemm_share": 0.5}),
        (110.0, 55.0, {"steps": 10, "step_s": 1.0, "forward_s": 0.8, "gemm_share": 0.75}),
    ]
    got = engine_speed.summarise_runs(runs)
    assert got["gemm_share_of_steps"] == pytest.approx((0.45 + 0.6) / 2.0)
    runs[1][2]["gemm_share"] = None  # a run without the native batch step: no share at all
    assert engine_speed.summarise_runs(runs)["gemm_share_of_steps"] is None
    result = {"throughput": [{"batch": 64, "engines": {"e": {"gemm_share_of_steps": 0.6}}}]}
    assert engine_speed._in_step_share(result, "e", 64) == "; its GEMMs are 60% of its steps' time"


def test_a_timed_batch_run_reads_its_gemm_share_from_the_phase_clock(tmp_path):
    from latlab.engine import LLM
    from latlab.testing.random_model import TINY_TEST, save_random_llama

    dtype = batch_step_dtype()
    model_dir = save_random_llama(tmp_path / "tiny", TINY_TEST, dtype="bfloat16", seed=1)
    llm = LLM(str(model_dir), dtype=dtype, max_num_seqs=8)
    prompts = engine_speed.distinct_prompts(8, 6, 4096)
    _, _, split = engine_speed.time_engine(llm, prompts, 4)
    assert 0.0 < split["gemm_share"] < 1.0
    assert dict(llm.engine.runner.batch_decoder.phase_seconds())["qkv"] == 0.0  # timing off again
    _, _, small = engine_speed.time_engine(llm, prompts[:4], 4)  # 1-4 rows: the GEMV step
    assert small["gemm_share"] is None


def test_every_round_probes_then_times_each_system_once_with_the_anchors_last(monkeypatch):
    """A B A B: latlab's variants and each paused vLLM variant take turns within a round, and
    the probes open each round, so medians and ratios come from the same minutes."""
    import argparse
    import types

    calls = []
    monkeypatch.setattr(engine_speed, "bandwidth", lambda: calls.append("bw") or 2e10)
    monkeypatch.setattr(engine_speed, "gemm_rates", lambda engines, batch: calls.append("gemm")
                        or {name: 1e11 for name in engines})  # fmt: skip

    def time_engine(llm, prompts, output_len):
        calls.append(f"{llm}@{len(prompts)}x{output_len}")
        split = {"steps": 4, "step_s": 0.1, "forward_s": 0.09, "gemm_share": None}
        return (100.0 if llm == "latlab" else 150.0), 50.0, split

    class Anchor:
        def __init__(self, label, rates):
            self.label, self.rates = label, iter(rates)

        def round(self, batch):
            calls.append(f"{self.label}@{batch}")
            return {"batch": batch, "tok_per_s": next(self.rates)}

    monkeypatch.setattr(engine_speed, "time_engine", time_engine)
    anchors = {"auto": Anchor("auto", [40.0, 60.0, 50.0]), "all": Anchor("all", [70, 90, 80])}
    args = argparse.Namespace(batches="4", prompt_len=6, output_len=32, repeats=3)
    engines = {"latlab": "latlab", "latlab-int8": "latlab-int8"}
    rows = engine_speed.throughput(args, engines, None, 4096, anchors)
    one_round = ["bw", "gemm", "latlab@4x32", "latlab-int8@4x32", "auto@4", "all@4"]
    assert calls == ["latlab@4x8", "latlab-int8@4x8"] + one_round * 3  # warm-ups, then rounds
    row = rows[0]
    assert row["vllm_rounds"] == {"auto": [40.0, 60.0, 50.0], "all": [70, 90, 80]}
    assert row["bandwidth_bytes_s"] == [2e10] * 3 and row["gemm_flop_s"]["latlab"] == 1e11
    assert row["engines"]["latlab-int8"]["tok_s_median"] == 150.0

    loads = {"auto": {"load_s": 120.0}, "all": {"load_s": 110.0}}
    result = {"throughput": rows, "vllm_loads": loads}
    pairing = types.SimpleNamespace(vllm_pairing="interleaved")
    vllm = engine_speed.vllm_anchor(pairing, None, result)
    assert vllm["best"] == {4: (80, "all")} and vllm["pairing"] == "interleaved"
    assert vllm["runs"]["auto"]["tok_s"] == {4: 50.0} and vllm["runs"]["auto"]["load_s"] == 120
    assert vllm["runs"]["all"]["raw"]["rounds"] == {4: [70, 90, 80]}
    assert "vllm_loads" not in result  # folded into the runs


def test_the_roofline_takes_each_batchs_own_bandwidth_probes(monkeypatch):
    import argparse
    import types

    from latlab.engine import roofline as rl

    cost = types.SimpleNamespace(flops_per_token=1e9, bytes_per_token=1e8)
    cost.as_dict = lambda: {"batch": 1, "bytes_per_token": 1e8}  # as decode_cost's
    monkeypatch.setattr(rl, "decode_cost", lambda model, **kw: cost)
    engine = types.SimpleNamespace(runner=types.SimpleNamespace(model=None), kv_bytes_per_token=1)
    row = {"batch": 1, "engines": {"e": {"tok_s_median": 90.0, "tok_s": [90.0, 80.0, 150.0]}},
           "gemm_flop_s": {"e": 1e10},
           "bandwidth_bytes_s": [9e9, 10e9, 30e9]}  # fmt: skip
    result = {"bandwidth_bytes_s": [20e9, 20e9], "throughput": [row]}
    args = argparse.Namespace(prompt_len=8, output_len=32)
    got = engine_speed.roofline(args, {"e": types.SimpleNamespace(engine=engine)}, result)[0]
    assert got["bandwidth_bytes_s"] == 10e9  # the median of its rounds, not the run's 20e9
    assert got["bandwidth_limit_tok_s"] == 100.0
    # each round against the probe that opened it: 90 / 90, 80 / 100, 150 / 300 tok/s
    assert engine_speed.round_fractions(result, got) == pytest.approx([1.0, 0.8, 0.5])
    assert engine_speed.round_fractions({"throughput": []}, got) is None


def test_an_anchor_failing_in_a_round_is_dropped_and_the_others_go_on(monkeypatch, capsys):
    error = engine_speed.beside("anchor_rounds").AnchorError

    class Anchor:
        def __init__(self, fail_at=None):
            self.rounds, self.fail_at, self.closed = 0, fail_at, False

        def round(self, batch):
            self.rounds += 1
            if self.rounds == self.fail_at:
                raise error("vllm bind=auto ended before it sent a round at batch 64")
            return {"batch": batch, "tok_per_s": 10.0 * self.rounds}

        def close(self):
            self.closed = True

    flaky, steady = Anchor(fail_at=2), Anchor()
    anchors = {"auto": flaky, "all": steady}
    rounds = []
    for _ in range(3):
        got = {"bandwidth_bytes_s": 1.0, "gemm_flop_s": {}, "engines": {}}
        got["anchors"] = engine_speed.anchor_rounds(anchors, 64)
        rounds.append(got)
    assert list(anchors) == ["all"] and flaky.closed and not steady.closed
    assert "vLLM auto dropped: vllm bind=auto ended before" in capsys.readouterr().out
    row = engine_speed.batch_row(64, rounds)
    assert row["vllm_rounds"] == {"all": [10.0, 20.0, 30.0]}  # none of the dropped one's


def test_after_pairing_runs_each_vllm_variant_once_latlab_is_done(monkeypatch):
    import types

    ran = []

    def run_vllm(args, model_dir, dtype, bind):
        ran.append((dtype, bind))
        if bind == "auto":
            return None  # a failed run is left out
        tok_s = 300.0 if dtype == "float32" else 250.0
        return {"load_s": 90.0, "throughput": [{"batch": 64, "tok_per_s_median": tok_s}]}

    monkeypatch.setattr(engine_speed, "run_vllm", run_vllm)
    args = types.SimpleNamespace(vllm_pairing="after", vllm_dtypes="float32,bfloat16",
                                 vllm_binds="auto,all")  # fmt: skip
    vllm = engine_speed.vllm_anchor(args, None, {"vllm_loads": {}})
    assert ran == [("float32", "auto"), ("float32", "all"), ("bfloat16", "auto"),
                   ("bfloat16", "all")]  # fmt: skip
    assert set(vllm["runs"]) == {"float32 bind=all", "bfloat16 bind=all"}
    assert vllm["best"] == {64: (300.0, "float32 bind=all")} and vllm["pairing"] == "after"
