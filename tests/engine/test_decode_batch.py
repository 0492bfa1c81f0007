"""The one-call decode step of 5-64 rows (kernels/decode_batch.cpp), in bf16 on AMX tiles and in
float32 on the AVX2 FMA panels: the step-ops path's tokens and logprobs bit for bit, at any
thread count and KV dtype, with and without a q/k/v bias; when the engine uses it and why not;
what it refuses. The bf16 tests skip without AMX, the float32 ones without AVX2 FMA."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from latlab.engine import LLM, SamplingParams
from latlab.engine.kernels import (
    BATCH_INT8,
    F32_BATCH,
    amx_int8,
    batch_decode_model,
    f32_batch_decode_model,
)
from latlab.testing.random_model import TINY_TEST, save_random_llama

from ._reference import built_or_skip


@pytest.fixture(scope="module")
def batch_step():
    return built_or_skip(batch_decode_model)


KERNELS = {"bfloat16": batch_decode_model, "float32": f32_batch_decode_model}


@pytest.fixture(params=list(KERNELS))
def dtype(request) -> str:
    """Each kind of batch step: bf16 on AMX tiles, float32 on the panels (skipped where absent)."""
    built_or_skip(KERNELS[request.param])
    return request.param


def _prompts(count: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(count)
    return [
        torch.randint(3, 4000, (3 + (7 * i) % 19,), generator=gen).tolist() for i in range(count)
    ]


def _generate(model_dir, prompts, dtype="bfloat16", **config) -> tuple[list, list]:
    llm = LLM(str(model_dir), dtype=dtype, max_num_seqs=64, **config)
    outs = llm.generate(prompts, SamplingParams(max_tokens=8, logprobs=3, ignore_eos=True))
    logprobs = [[(t, lp.logprob) for pos in o.logprobs for t, lp in pos.items()] for o in outs]
    return [o.token_ids for o in outs], logprobs


@pytest.mark.parametrize("kv", ["bfloat16", "float32", "fp8_e5m2", "int8"])
@pytest.mark.parametrize("model", ["tiny_model_dir", "qwen2_model_dir"])
@pytest.mark.parametrize("count", [5, 12, 64])
def test_batch_steps_give_the_step_ops_numbers_bit_for_bit(dtype, request, model, kv, count):
    """Same rounding points, same row primitives, same column (AMX or panel) and attention
    kernels: the batch step changes how many calls a step makes, not one bit of its logits."""
    model_dir = request.getfixturevalue(model)  # qwen2: non-zero q/k/v biases
    prompts = _prompts(count)
    llm = LLM(str(model_dir), dtype=dtype, max_num_seqs=64, kv_cache_dtype=kv)
    kind = "bf16" if dtype == "bfloat16" else "float32"
    assert llm.engine.describe()["decode_batches"].startswith(f"native {kind} decode steps")
    want = _generate(model_dir, prompts, dtype, kv_cache_dtype=kv, native_decode=False)
    assert _generate(model_dir, prompts, dtype, kv_cache_dtype=kv) == want


@pytest.mark.parametrize("model", ["tiny_model_dir", "qwen2_model_dir"])
def test_w8a8_batch_steps_give_the_step_ops_numbers_bit_for_bit(batch_step, request, model):
    """W8A8 on AMX int8 tiles: the batch step quantizes each GEMM input row as the torch path's
    int8 linears do and runs the same column kernel, so the numbers are the same bits."""
    if amx_int8(wait=True)[0] is None:
        pytest.skip("no AMX-INT8 here")
    model_dir = request.getfixturevalue(model)  # qwen2: a q/k/v bias through the int8 GEMM
    prompts = _prompts(12)
    llm = LLM(str(model_dir), dtype="bfloat16", max_num_seqs=64, quantization="int8")
    assert llm.engine.describe()["decode_batches"] == BATCH_INT8
    assert "kernel: amx-int8" in llm.engine.describe()["reason"]
    want = _generate(model_dir, prompts, quantization="int8", native_decode=False)
    got = _generate(model_dir, prompts, quantization="int8")
    assert got == want
    bf16 = _generate(model_dir, prompts)
    assert got != bf16  # the int8 numbers, not bf16 ones


def test_batch_steps_are_bit_identical_at_any_thread_count(dtype, tiny_model_dir):
    prompts = _prompts(9)
    before = torch.get_num_threads()
    try:
        runs = [_generate(tiny_model_dir, prompts, dtype, num_threads=n) for n in (1, 2, 3)]
    finally:
        torch.set_num_threads(before)
    assert runs[0] == runs[1] == runs[2]


def test_the_engine_says_when_batch_steps_are_not_native(
    dtype, tiny_model_dir, tmp_path, monkeypatch
):
    def reason(model_dir, **config) -> str:
        return LLM(str(model_dir), dtype=dtype, **config).engine.describe()["decode_batches"]

    assert reason(tiny_model_dir, native_decode=False) == "native_decode=False"
    plain = reason(tiny_model_dir, packed_linear=False)  # neither AMX-packed nor panels
    assert plain == "the step ops per op (plain linears)"
    assert reason(tiny_model_dir, max_num_seqs=4) == "max_num_seqs <= 4"
    monkeypatch.setenv("LATLAB_NATIVE_KERNELS", "0")
    assert reason(tiny_model_dir) == "torch ops (LATLAB_NATIVE_KERNELS=0)"


def test_a_linear_that_fits_no_column_kernel_keeps_the_step_ops(batch_step, tmp_path):
    """bf16: an intermediate size of 80 is not a whole number of AMX K tiles."""
    odd = save_random_llama(tmp_path, dataclasses.replace(TINY_TEST, intermediate_size=80))
    runner = LLM(str(odd), dtype="bfloat16", max_num_seqs=64).engine.runner
    assert runner.batch_reason == "a linear layer fits none of the AMX tiles or the float32 panels"


def test_int8_linears_outside_the_amx_tiles_keep_the_step_ops_and_say_so(tiny_model_dir):
    """W8A8 on fbgemm (a CPU without AMX-INT8): the batch step runs no fbgemm kernel."""
    runner = LLM(str(tiny_model_dir), quantization="int8", max_num_seqs=64).engine.runner
    kernel = runner.model.layers[0].self_attn.qkv_proj.kernel
    if kernel == "amx-int8":
        pytest.skip("AMX-INT8 here: the batch step runs these int8 linears")
    assert runner.batch_reason == f"the step ops per op (int8 linears on {kernel})"


def test_the_float32_batch_step_is_the_default_at_batch_sizes_over_4(tiny_model_dir):
    """Where the CPU has the panels and no bf16 GEMMs the engine decodes float32 batches with it."""
    built_or_skip(f32_batch_decode_model)
    runner = LLM(str(tiny_model_dir), dtype="float32", max_num_seqs=64).engine.runner
    if runner.weight_plan.linear != "f32-panels":
        pytest.skip(f"float32 linears here: {runner.weight_plan.linear}")
    assert runner.batch_reason == F32_BATCH and runner.native_batch_step is not None


def _runner_inputs(model_dir, dtype="bfloat16", **config):
    runner = LLM(str(model_dir), dtype=dtype, max_num_seqs=64, **config).engine.runner
    rows = torch.arange(5)  # five sequences at position 0, each in a block of its own
    tables = rows.view(5, 1).clone()
    inputs = {"ids": rows + 5, "positions": rows * 0, "slots": rows * runner.block_size,
              "logit_rows": rows, "block_tables": tables, "seq_lens": rows * 0 + 1}  # fmt: skip
    return runner, inputs


def _runner_step(model_dir, dtype="bfloat16"):
    runner, inputs = _runner_inputs(model_dir, dtype)
    return runner.native_batch_step, inputs


def test_a_batch_step_computes_the_rows_it_is_asked_for(dtype, tiny_model_dir):
    step, inputs = _runner_step(tiny_model_dir, dtype)
    logits = step(**inputs)
    assert logits.shape == (5, 4096) and logits.dtype == torch.float32
    again = step(**{**inputs, "logit_rows": torch.tensor([4, 4, 0])})
    torch.testing.assert_close(again, logits[[4, 4, 0]], rtol=0, atol=0)


PHASES = ["embed", "norm", "quantize", "qkv", "attention", "o", "gate_up", "silu_mul", "down",
          "head", "barrier"]  # fmt: skip


@pytest.mark.parametrize(("kind", "quantization"), [("bfloat16", None), ("bfloat16", "int8"),
                                                    ("float32", None)])  # fmt: skip
def test_timed_steps_account_for_each_phase_and_untimed_ones_for_none(
    tiny_model_dir, kind, quantization
):
    """The phase clock: every phase a step runs is counted (quantizing GEMM inputs is W8A8's
    alone), the sums stay within the threads' wall time, reading resets them, and timing off
    counts nothing; the logits are the same either way."""
    built_or_skip(KERNELS[kind])
    if quantization and amx_int8(wait=True)[0] is None:
        pytest.skip("no AMX-INT8 here")
    runner, inputs = _runner_inputs(tiny_model_dir, kind, quantization=quantization)
    decoder = runner.batch_decoder
    untimed = decoder.step(**inputs)
    assert dict(decoder.phase_seconds()) == dict.fromkeys(PHASES, 0.0)
    decoder.time_phases(True)
    start = time.perf_counter()
    timed = [decoder.step(**inputs) for _ in range(3)]
    wall = time.perf_counter() - start
    phases = dict(decoder.phase_seconds())
    assert list(phases) == PHASES
    assert all(phases[p] > 0 for p in PHASES if p != "quantize")
    assert (phases["quantize"] > 0) == (quantization == "int8")
    assert sum(phases.values()) <= torch.get_num_threads() * wall
    assert sum(dict(decoder.phase_seconds()).values()) == 0.0  # read: reset
    decoder.time_phases(False)
    decoder.step(**inputs)
    assert sum(dict(decoder.phase_seconds()).values()) == 0.0
    for logits in timed:
        torch.testing.assert_close(logits, untimed, rtol=0, atol=0)


def _longs(*values):
    return torch.tensor(values, dtype=torch.long)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ids": _longs(5, 6, 7, 8, 10**6)}, "token id 1000000 outside the vocabulary"),
        ({"positions": _longs(0, 0, 0, 0, -1)}, "position -1 outside the RoPE tables"),
        ({"slots": _longs(0, 16, 32, 48, 10**9)}, "slot 1000000000 outside the cache"),
        ({"block_tables": torch.full((5, 1), 10**6)}, "block 1000000 outside the cache"),
        ({"seq_lens": _longs(1, 1, 1, 1, 17)}, "sequence length 17 beyond its block table"),
        ({"logit_rows": _longs(5)}, "logit row 5 is not one of the step's 5 rows"),
        ({"logit_rows": torch.zeros(65, dtype=torch.long)}, "at most 64 logit rows"),
        (
            {k: _longs(0, 0, 0, 0) for k in ("ids", "positions", "slots", "seq_lens")},
            "5 to 64 sequences, got 4",
        ),
        ({"seq_lens": _longs(1, 1, 1, 1)}, r"seq_lens must be int64 \[5\]"),
        ({"block_tables": _longs(0, 0, 0, 0, 0)}, r"block tables must be int64 \[5, max_blocks\]"),
    ],
)
def test_a_batch_step_refuses_inputs_outside_its_tensors(dtype, tiny_model_dir, change, message):
    step, inputs = _runner_step(tiny_model_dir, dtype)
    with pytest.raises(RuntimeError, match=message):
        step(**{**inputs, **change})


def test_the_batch_decoder_refuses_tensors_that_do_not_fit(batch_step, tiny_model_dir):
    runner = LLM(str(tiny_model_dir), dtype="bfloat16", max_num_seqs=64).engine.runner
    (model, layers), _ = runner.model.batch_decoder_tensors(runner.kv_caches)
    heads = runner.model.args.num_attention_heads
    with pytest.raises(RuntimeError, match="9 tensors per layer"):
        batch_step(model, [layers[0][:8]], heads, 1e-6, 0.25)
    with pytest.raises(RuntimeError, match="an AMX-packed weight of 128 x 64 expected"):
        batch_step(model, [[layers[0][0], layers[0][3], *layers[0][2:]]], heads, 1e-6, 0.25)
    with pytest.raises(RuntimeError, match="a contiguous bf16 CPU tensor expected"):
        batch_step([model[0].float(), *model[1:]], layers, heads, 1e-6, 0.25)
    with pytest.raises(RuntimeError, match="no layers"):
        batch_step(model, [], heads, 1e-6, 0.25)


def test_the_float32_batch_decoder_refuses_tensors_that_do_not_fit(tiny_model_dir):
    step = built_or_skip(f32_batch_decode_model)
    runner = LLM(str(tiny_model_dir), dtype="float32", max_num_seqs=64).engine.runner
    tensors, why_not = runner.model.batch_decoder_tensors(runner.kv_caches)
    if tensors is None:
        pytest.skip(why_not)
    model, layers = tensors
    heads = runner.model.args.num_attention_heads
    with pytest.raises(RuntimeError, match="a weight of 128 x 64 packed by f32_pack expected"):
        step(model, [[layers[0][0], layers[0][3], *layers[0][2:]]], heads, 1e-6, 0.25)
    with pytest.raises(RuntimeError, match="a contiguous float32 CPU tensor expected"):
        step([model[0].bfloat16(), *model[1:]], layers, heads, 1e-6, 0.25)
    with pytest.raises(RuntimeError, match="int8 weights run in bf16 steps only"):
        scales = [torch.ones(n) for n in (128, 64, 256, 64)]
        step(model, [layers[0] + scales], heads, 1e-6, 0.25)
