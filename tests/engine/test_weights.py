"""How the engine holds its weights: the plan per CPU, the int8 layers, the thread choice."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from latlab.engine import LLM, EngineConfig, SamplingParams, hardware
from latlab.engine.hardware import (
    CoreLoad,
    CpuCapabilities,
    choose_threads,
    cpu_capabilities,
)
from latlab.engine.kernels import f32_panels
from latlab.engine.models.int8_linear import (
    Int8Linear,
    fbgemm_ready,
    quantize_linears,
    quantize_per_channel,
)
from latlab.engine.models.packed_linear import PackedLinear
from latlab.engine.models.panel_linear import PanelPackedLinear
from latlab.engine.weights import plan_weights
from latlab.errors import ConfigError

from ._reference import mixed_prompts

AVX2 = CpuCapabilities(
    model="test", isa="AVX2", native_bf16=False, native_fp16=False, int8_dot="avx2",
    fbgemm=True, cores=2,
)  # fmt: skip
AVX512_BF16 = dataclasses.replace(AVX2, isa="AVX512", native_bf16=True, int8_dot="vnni")
AMX = dataclasses.replace(AVX512_BF16, native_fp16=True, int8_dot="amx", amx_bf16=True)
CPU = torch.device("cpu")


def _plan(dtype=torch.bfloat16, caps=AVX2, **options):
    settings = {"quantization": None, "packed_linear": None, "compile": False} | options
    return plan_weights(dtype=dtype, device=CPU, caps=caps, **settings)


def test_bf16_without_bf16_instructions_computes_in_float32_on_packed_copies():
    plan = _plan()
    assert plan.dtype == torch.bfloat16 and plan.compute_dtype == torch.float32
    assert plan.linear == "f32-panels"  # AVX2 only: the engine's panel GEMM
    assert "no bfloat16 GEMM" in plan.reason and "AVX2 panel GEMM" in plan.reason
    avx512 = _plan(caps=dataclasses.replace(AVX2, isa="AVX512"))  # 16 lanes: oneDNN's
    assert (avx512.compute_dtype, avx512.linear) == (torch.float32, "onednn-packed")


def test_bf16_with_bf16_instructions_stays_bf16_packed_beside_the_plain_weights():
    plan = _plan(caps=AVX512_BF16, max_rows=64)
    assert (plan.compute_dtype, plan.linear, plan.keep_plain) == (
        torch.bfloat16, "onednn-packed", True
    )  # fmt: skip
    assert "bfloat16: plain weights for steps of 1-4 rows" in plan.reason
    amx = _plan(caps=AMX, max_rows=64)
    assert (amx.linear, amx.keep_plain) == ("amx-packed", True)
    assert "packed once for AMX tiles" in amx.reason
    small = _plan(caps=AMX, max_rows=4)
    assert (small.compute_dtype, small.linear, small.keep_plain) == (
        torch.bfloat16, "plain", False
    )  # fmt: skip


def test_float32_packs_copies_beside_the_plain_weights_when_steps_can_exceed_four_rows():
    small = _plan(torch.float32, max_rows=4)
    assert (small.linear, small.keep_plain) == ("plain", False)
    for plan in (_plan(torch.float32, max_rows=64), _plan(torch.float32, packed_linear=True)):
        assert plan.compute_dtype == torch.float32 and plan.keep_plain
        assert plan.linear == "f32-panels"  # AVX2
        assert "twice the linear weights' memory" in plan.reason
    for caps in (AVX512_BF16, AMX):  # float32 with AVX-512: oneDNN's 16-lane GEMM
        assert _plan(torch.float32, caps=caps, max_rows=64).linear == "onednn-packed"
    assert _plan(torch.float32, max_rows=64, packed_linear=False).linear == "plain"
    assert not _plan(max_rows=64).keep_plain  # bf16: the packed float32 copies only


def test_packed_linear_false_or_compile_keep_the_requested_dtype_plain():
    for options in ({"packed_linear": False}, {"compile": True}):
        plan = _plan(**options)
        assert (plan.compute_dtype, plan.linear) == (torch.bfloat16, "plain")


def test_quantization_plans_int8_and_widens_activations_where_needed():
    plan = _plan(quantization="int8")
    assert (plan.linear, plan.compute_dtype) == ("int8", torch.float32)
    assert _plan(caps=AMX, quantization="int8-weight-only").compute_dtype == torch.bfloat16


def test_cuda_plan_keeps_the_dtype():
    plan = plan_weights(
        dtype=torch.bfloat16, device=torch.device("cuda"), caps=AVX2, quantization=None,
        packed_linear=None, compile=False,
    )  # fmt: skip
    assert (plan.compute_dtype, plan.linear) == (torch.bfloat16, "plain")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"compile": True, "packed_linear": True}, "packed_linear"),
        ({"compile": True, "quantization": "int8"}, "compile"),
        ({"quantization": "int4"}, "quantization"),
    ],
)
def test_conflicting_options_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        _plan(**options)


def test_engine_config_rejects_unknown_quantization():
    with pytest.raises(ConfigError, match="quantization"):
        EngineConfig(quantization="fp8")


def test_threads_requested_wins_and_load_takes_cores_away():
    def load(busy):
        return CoreLoad(busy=busy, source="over the last 0.2 s")

    assert choose_threads(3, cores=2, load=load(9.0)).threads == 3
    assert choose_threads(None, cores=2, load=load(0.2)).threads == 2
    busy = choose_threads(None, cores=2, load=load(12.0))
    assert busy.threads == 1 and "busy on 12.0 cores, over the last 0.2 s" in busy.reason
    assert choose_threads(None, cores=8, load=load(3.0)).threads == 5


def test_busy_cores_sample_sees_another_process():
    """A spinning child process counts as other jobs' load on our cores."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.1)
        seen = hardware.sample_busy_cores(0.3)
    finally:
        spinner.kill()
        spinner.wait()
    assert seen is not None and seen >= 0.3


def test_thread_choice_falls_back_to_the_load_average_without_proc_stat(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_jiffies", lambda cpus: None)
    monkeypatch.setattr(hardware, "_last_sample", None)
    assert hardware.other_load().source == "1-minute load average"
    monkeypatch.setattr(hardware, "cpu_jiffies", lambda cpus: {c: (1, 1) for c in cpus})
    # one sample serves every engine started within 10 s
    assert hardware.other_load().source == "1-minute load average"


def test_cpu_capabilities_are_consistent():
    caps = cpu_capabilities()
    assert caps.cores >= 1 and caps.isa
    assert caps.int8_dot in ("amx", "vnni", "avx2", "none")
    assert set(caps.as_dict()) >= {"native_bf16", "int8_dot", "fbgemm"}


# ---- int8 layers -----------------------------------------------------------------------


def _layer(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(256, 384, bias=bias)


def test_per_channel_quantization_round_trips_within_half_a_step():
    w = _layer().weight.detach()
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    assert torch.all((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7)


def _relative_error(mode: str, x: torch.Tensor, bias: bool = True) -> float:
    linear = _layer(bias)
    with torch.no_grad():
        ref = linear(x)
        got = Int8Linear(linear, mode)(x)
    assert got.shape == ref.shape and got.dtype == x.dtype
    return float((got - ref).norm() / ref.norm())


@pytest.mark.parametrize("rows", [1, 5, 64])
def test_int8_layers_stay_close_to_float(rows):
    x = torch.randn(rows, 256)
    assert _relative_error("int8-weight-only", x) < 0.01
    assert _relative_error("int8", x) < 0.03
    assert _relative_error("int8", x, bias=False) < 0.03


@pytest.mark.skipif(not fbgemm_ready(), reason="this torch build has no fbgemm")
def test_activation_scales_are_per_token_not_per_tensor():
    """One loud row must not crush the precision of the others (per-tensor would)."""
    x = torch.randn(16, 256)
    x[0] *= 50
    linear = _layer(bias=False)
    layer = Int8Linear(linear, "int8")
    with torch.no_grad():
        ref = linear(x)[1:]
        per_token = layer(x)[1:]
        per_tensor = torch.ops.quantized.linear_dynamic(x, layer._packed, True)[1:]
    err_token = float((per_token - ref).norm() / ref.norm())
    err_tensor = float((per_tensor - ref).norm() / ref.norm())
    assert err_token < 0.03 < err_tensor


def test_int8_layer_keeps_bf16_inputs_bf16_and_3d_shapes():
    layer = Int8Linear(_layer(), "int8")
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    assert layer(x).shape == (2, 3, 384) and layer(x).dtype == torch.bfloat16


def test_quantize_linears_skips_the_head():
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(8, 8))
    model.add_module("lm_head", nn.Linear(8, 4))
    assert quantize_linears(model, "int8") == 1
    assert isinstance(model.proj, Int8Linear) and isinstance(model.lm_head, nn.Linear)
    with pytest.raises(ValueError, match="mode"):
        Int8Linear(nn.Linear(8, 8), "int3")


# ---- the engine with these plans --------------------------------------------------------


@pytest.mark.parametrize("mode", ["int8", "int8-weight-only"])
def test_engine_runs_int8_and_reports_it(tiny_model_dir, mode):
    llm = LLM(str(tiny_model_dir), quantization=mode, max_num_batched_tokens=16)
    report = llm.engine.describe()
    assert report["linear"] == mode and "kernel:" in report["reason"]
    assert f"linear {mode}" in llm.engine.summary()
    outs = llm.generate(mixed_prompts(4), SamplingParams(max_tokens=6, ignore_eos=True))
    assert all(len(o.token_ids) == 6 for o in outs)


def test_engine_logits_with_int8_weights_stay_close(tiny_model_dir):
    """The first greedy token after each prompt mostly survives int8 on a random model."""
    prompts = mixed_prompts(6)
    params = SamplingParams(max_tokens=1)
    plain = [o.token_ids for o in LLM(str(tiny_model_dir)).generate(prompts, params)]
    wo = LLM(str(tiny_model_dir), quantization="int8-weight-only").generate(prompts, params)
    assert sum(a == o.token_ids for a, o in zip(plain, wo, strict=True)) >= 5


def test_engine_report_names_threads_and_dtypes(tiny_model_dir):
    report = LLM(str(tiny_model_dir), num_threads=1, max_num_seqs=4).engine.describe()
    assert report["threads"] == 1 and report["threads_reason"] == "num_threads set"
    assert report["dtype"] == report["compute_dtype"] == "float32"
    assert report["linear"] == "plain" and report["kv_cache_dtype"] == "float32"
    panels = cpu_capabilities().isa == "AVX2" and f32_panels()[0] is not None
    packed = "f32-panels" if panels else "onednn-packed"
    assert LLM(str(tiny_model_dir)).engine.describe()["linear"] == packed


def test_plain_weights_are_released_when_no_native_layer_reads_them(tiny_model_dir):
    runner = LLM(str(tiny_model_dir), native_decode=False).engine.runner
    assert runner.weight_plan.keep_plain
    packed = [m for m in runner.model.modules() if isinstance(m, (PackedLinear, PanelPackedLinear))]
    assert packed and all(m.weight is None for m in packed)
    assert runner.model.embed_tokens.weight.numel() > 0  # a tied head's embedding stays


def test_score_gives_the_logits_greedy_decoding_follows(tiny_model_dir):
    llm = LLM(str(tiny_model_dir))
    prompt = mixed_prompts(2)[1]
    out = llm.generate([prompt], SamplingParams(max_tokens=3))[0]
    logits = llm.engine.runner.score(prompt + out.token_ids[:2])
    assert logits.shape == (len(prompt) + 2, llm.engine.model_args.vocab_size)
    assert logits.dtype == torch.float32
    assert logits[len(prompt) - 1 :].argmax(-1).tolist() == out.token_ids
    assert llm.engine.stats().kv_cache_usage == 0.0  # the engine's own cache untouched


class _Machine:
    """A scripted /proc/stat and clock: per look, other processes' busy cores and our own."""

    def __init__(self, cpus: list[int]) -> None:
        self.cpus, self.now, self.own, self.jiffies = cpus, 0.0, 0.0, {c: (0, 0) for c in cpus}

    def advance(self, *, others: float, own: float, seconds: float = 1.0) -> None:
        per_cpu = (others + own) / len(self.cpus)  # busy share of each CPU
        ticks = 100 * seconds
        self.jiffies = {
            c: (busy + round(per_cpu * ticks), total + round(ticks))
            for c, (busy, total) in self.jiffies.items()
        }
        self.now += seconds
        self.own += own * seconds


def _follower(threads: int) -> tuple[hardware.ThreadFollower, _Machine]:
    cpus = sorted(os.sched_getaffinity(0))
    machine = _Machine(cpus)
    follower = hardware.ThreadFollower(
        threads=threads,
        read=lambda _: dict(machine.jiffies),
        clock=lambda: machine.now,
        own_cpu=lambda: machine.own,
    )
    return follower, machine


@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="scripted for a 2-core machine")
def test_threads_follow_other_jobs_after_two_agreeing_looks():
    follower, machine = _follower(threads=2)
    machine.advance(others=0.0, own=2.0)
    assert follower.check() is None  # nobody else: stay at 2
    machine.advance(others=0.7, own=1.3)  # a job arrives and gets 0.7 of a core
    assert follower.check() is None  # one look is not enough (bursts do not flap)
    machine.advance(others=0.7, own=1.3)
    assert follower.check() == 1 and follower.threads == 1
    machine.advance(others=1.0, own=1.0)
    assert follower.check() is None  # still busy: stay at 1
    machine.advance(others=0.0, own=1.0)
    assert follower.check() is None
    machine.advance(others=0.0, own=1.0)  # the job left: back to both cores
    assert follower.check() == 2 and follower.changes == 2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="scripted for a 2-core machine")
def test_follower_waits_for_its_interval_and_ignores_a_long_idle_gap():
    follower, machine = _follower(threads=2)
    machine.advance(others=2.0, own=0.0, seconds=0.5)
    assert follower.check() is None  # not due yet
    machine.advance(others=2.0, own=0.0, seconds=30.0)  # idle engine: this gap says nothing
    assert follower.check() is None
    machine.advance(others=1.0, own=1.0)
    assert follower.check() is None and follower.threads == 2  # the first look of two


def test_engine_threads_follow_load_only_when_it_chose_them(tiny_model_dir):
    chosen = LLM(str(tiny_model_dir), kv_cache_bytes=1 << 20).engine
    pinned = LLM(str(tiny_model_dir), kv_cache_bytes=1 << 20, num_threads=1).engine
    many_cores = len(os.sched_getaffinity(0)) > 1
    assert chosen.describe()["threads_follow_load"] is many_cores
    assert pinned.describe()["threads_follow_load"] is False
    if many_cores:
        assert "as other jobs come and go" in chosen.summary()
