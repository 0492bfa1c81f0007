"""The native decode step and its GEMV (kernels/decode_step.cpp) against the torch path:
F.linear at every row count and awkward shape, and whole decode steps (logprobs and tokens)
with and without a q/k/v bias, in float32 and bf16 KV caches, at any thread count; what it
refuses; the runner says when it is used."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from latlab.engine import LLM, SamplingParams
from latlab.engine.hardware import cpu_capabilities
from latlab.engine.kernels import decode_model, small_linear
from latlab.engine.models.gemv_blocks import gemv_weight
from latlab.engine.models.int8_linear import quantize_per_channel
from latlab.engine.models.packed_linear import PackedLinear
from latlab.engine.models.panel_linear import PanelPackedLinear
from latlab.errors import ConfigError
from latlab.testing.random_model import TINY_TEST, save_random_llama

from ._reference import built_or_skip, mixed_prompts


@pytest.fixture(scope="module")
def gemv():
    return built_or_skip(small_linear)


@pytest.fixture(scope="module")
def native_step():
    return built_or_skip(decode_model)


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize(("n", "k"), [(64, 64), (37, 300), (5, 13), (2304, 768)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_f_linear(gemv, rows, n, k, bias):
    gen = torch.Generator().manual_seed(n * k + rows)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    torch.testing.assert_close(gemv(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize(("n", "k"), [(37, 300), (2304, 768)])
def test_gemv_reads_bf16_weights_exactly(gemv, rows, n, k):
    """bf16 weights are widened exactly and summed in float32: F.linear on their float32 value."""
    gen = torch.Generator().manual_seed(n + rows)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen).bfloat16()
    torch.testing.assert_close(gemv(x, w, None), F.linear(x, w.float()), rtol=1e-5, atol=1e-4)


def test_gemv_refuses_what_it_does_not_compute(gemv):
    w = torch.randn(8, 16)
    with pytest.raises(RuntimeError, match="1 to 4 rows"):
        gemv(torch.randn(5, 16), w, None)
    with pytest.raises(RuntimeError, match="float32"):
        gemv(torch.randn(1, 16, dtype=torch.float64), w, None)
    with pytest.raises(RuntimeError, match=r"\[M, K\]"):
        gemv(torch.randn(1, 15), w, None)
    with pytest.raises(RuntimeError, match="float32, bf16 or int8"):
        gemv(torch.randn(1, 16), w.half(), None)


def _steps(model_dir, prompts, max_num_seqs=4, **config) -> tuple[list, list]:
    llm = LLM(str(model_dir), max_num_seqs=max_num_seqs, **config)
    outs = llm.generate(prompts, SamplingParams(max_tokens=8, logprobs=3, ignore_eos=True))
    logprobs = [[lp for pos in o.logprobs for lp in pos.values()] for o in outs]
    return [o.token_ids for o in outs], logprobs


@pytest.mark.parametrize("kv", ["float32", "bfloat16", "fp8_e5m2", "int8"])
@pytest.mark.parametrize("model", ["tiny_model_dir", "qwen2_model_dir"])
def test_native_decode_steps_match_the_torch_ops(native_step, request, model, kv):
    model_dir = request.getfixturevalue(model)  # qwen2: non-zero q/k/v biases
    prompts = mixed_prompts(3)
    torch_tokens, torch_lp = _steps(model_dir, prompts, native_decode=False, kv_cache_dtype=kv)
    tokens, lp = _steps(model_dir, prompts, native_decode=True, kv_cache_dtype=kv)
    assert tokens == torch_tokens
    for got, want in zip(lp, torch_lp, strict=True):
        assert [g.rank for g in got] == [w.rank for w in want]
        assert max(abs(g.logprob - w.logprob) for g, w in zip(got, want, strict=True)) < 1e-4


def test_runner_says_when_decode_steps_are_native(native_step, tiny_model_dir):
    native = LLM(str(tiny_model_dir)).engine.describe()
    assert native["decode_layers"].startswith("native decode steps")
    off = LLM(str(tiny_model_dir), native_decode=False).engine.describe()
    assert off["decode_layers"] == "torch ops per layer: native_decode=False"
    torch_attention = LLM(str(tiny_model_dir), native_attention=False).engine.describe()
    assert "no native attention" in torch_attention["decode_layers"]
    with pytest.raises(ConfigError, match="native_decode=True but int8"):
        LLM(str(tiny_model_dir), native_decode=True, quantization="int8")


def test_packed_float32_engine_decodes_small_steps_natively_on_the_plain_weights(
    native_step, tiny_model_dir
):
    """float32 with steps beyond 4 rows: packed copies for those (oneDNN's, or the AVX2 panel
    GEMM's on an AVX2-only CPU), the plain weights kept
    for the native decode steps; the tokens and log-probabilities are the plain engine's."""
    packed = LLM(str(tiny_model_dir))  # max_num_seqs 64
    runner = packed.engine.runner
    qkv = runner.model.layers[0].self_attn.qkv_proj
    assert runner.weight_plan.keep_plain and isinstance(qkv, (PackedLinear, PanelPackedLinear))
    assert gemv_weight(qkv) is not None and runner.native_step is not None
    prompts = mixed_prompts(6)
    params = SamplingParams(max_tokens=8, logprobs=3, ignore_eos=True)
    plain = LLM(str(tiny_model_dir), packed_linear=False)
    for batch in (prompts[:2], prompts):  # 2 rows: native; 6 rows: the packed GEMM
        got = packed.generate(batch, params)
        want = plain.generate(batch, params)
        assert [o.token_ids for o in got] == [o.token_ids for o in want]
        for g, w in zip(got, want, strict=True):
            gl = [lp.logprob for pos in g.logprobs for lp in pos.values()]
            wl = [lp.logprob for pos in w.logprobs for lp in pos.values()]
            assert max(abs(a - b) for a, b in zip(gl, wl, strict=True)) < 1e-4


def test_the_report_counts_the_weights_memory_packed_copies_included(native_step, tiny_model_dir):
    def held(**config) -> int:
        return LLM(str(tiny_model_dir), **config).engine.describe()["weight_memory_bytes"]

    plain, both = held(packed_linear=False), held(packed_linear=True)
    runner = LLM(str(tiny_model_dir), packed_linear=False).engine.runner
    layers = [m for m in runner.model.modules() if isinstance(m, torch.nn.Linear)]
    linears = sum(m.weight.numel() * 4 for m in layers)
    assert both - plain == linears  # one packed float32 copy of every linear, head included
    assert held(packed_linear=True, native_decode=False) == plain  # plain copies released
    assert "MB of weights in memory" in LLM(str(tiny_model_dir)).engine.summary()


@pytest.mark.skipif(not cpu_capabilities().native_bf16, reason="no bf16 GEMMs on this CPU")
def test_bf16_decode_steps_stream_bf16_weights_with_float32_activations(native_step, tmp_path):
    """A bf16 model's native decode steps read its bf16 weights and keep the activations in
    float32: tokens are those of float32 arithmetic on the same weights (the bf16 torch ops,
    rounding after every op, drifted from it by up to 0.26 in logprob on three seeds)."""
    model_dir = save_random_llama(tmp_path, TINY_TEST, seed=1, dtype="bfloat16")
    prompts = mixed_prompts(3)
    want, want_lp = _steps(model_dir, prompts, dtype="float32")
    for rows in (4, 64):  # plain bf16 weights only; beside oneDNN-packed copies
        llm = LLM(str(model_dir), dtype="bfloat16", max_num_seqs=rows)
        assert llm.engine.describe()["decode_layers"].startswith("native decode steps")
        assert llm.engine.runner.weight_plan.keep_plain == (rows > 4)
        got, got_lp = _steps(model_dir, prompts, max_num_seqs=rows, dtype="bfloat16")
        assert got == want
        for g, w in zip(got_lp, want_lp, strict=True):
            assert max(abs(a.logprob - b.logprob) for a, b in zip(g, w, strict=True)) < 5e-3


@pytest.mark.parametrize("kv", ["float32", "bfloat16"])
def test_a_step_gives_the_same_logits_at_any_thread_count(native_step, tiny_model_dir, kv):
    """Each GEMV row is one thread's whole dot product and each attention item one thread's, so
    the thread count changes who computes a number, never how: the logprobs are bit-identical."""
    prompts = mixed_prompts(3)
    before = torch.get_num_threads()
    try:
        runs = [
            _steps(tiny_model_dir, prompts, num_threads=n, kv_cache_dtype=kv) for n in (1, 2, 3)
        ]
    finally:
        torch.set_num_threads(before)
    assert runs[0] == runs[1] == runs[2]


def _decoder(model_dir):
    """A runner's native decode step, and the step inputs of one sequence at position 0."""
    runner = LLM(str(model_dir), max_num_seqs=4).engine.runner
    zero = torch.tensor([0])
    inputs = {"ids": torch.tensor([5]), "positions": zero, "slots": zero, "logit_rows": zero,
              "block_tables": torch.tensor([[0]]), "seq_lens": zero + 1}  # fmt: skip
    return runner.native_step, inputs


def test_a_step_computes_the_logit_rows_it_is_asked_for(native_step, tiny_model_dir):
    step, inputs = _decoder(tiny_model_dir)
    logits = step(**inputs)
    assert logits.shape == (1, 4096) and logits.dtype == torch.float32  # the tokenizer's vocab
    five = step(**{**inputs, "logit_rows": torch.tensor([0, 0, 0, 0, 0])})  # two head chunks
    assert five.shape == (5, 4096)
    for row in five:  # a 4-row chunk sums in another register blocking: last bits differ
        torch.testing.assert_close(row, logits[0])


def _longs(*values):
    return torch.tensor(values, dtype=torch.long)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ids": _longs(10**6)}, "token id 1000000 outside the vocabulary"),
        ({"ids": _longs(-1)}, "token id -1 outside the vocabulary"),
        ({"positions": _longs(10**6)}, "position 1000000 outside the RoPE tables"),
        ({"slots": _longs(10**9)}, "slot 1000000000 outside the cache"),
        ({"block_tables": torch.tensor([[10**6]])}, "block 1000000 outside the cache"),
        ({"seq_lens": _longs(17)}, "sequence length 17 beyond its block table"),
        ({"seq_lens": _longs(0)}, "sequence length 0 beyond its block table"),
        ({"logit_rows": _longs(1)}, "logit row 1 is not one of the step's 1 rows"),
        ({"ids": _longs(5, 6)}, r"positions must be int64 \[2\]"),
        ({"ids": torch.tensor([5.0])}, r"ids must be int64 \[1\]"),
        ({"block_tables": _longs(0)}, r"block tables must be int64 \[1, max_blocks\]"),
        (
            {
                k: torch.zeros(5, dtype=torch.long)
                for k in ("ids", "positions", "slots", "seq_lens")
            },
            "1 to 4 sequences, got 5",
        ),
    ],
)
def test_a_step_refuses_inputs_that_would_read_or_write_outside_its_tensors(
    native_step, tiny_model_dir, change, message
):
    step, inputs = _decoder(tiny_model_dir)
    with pytest.raises(RuntimeError, match=message):
        step(**{**inputs, **change})


def test_the_decoder_refuses_weights_that_do_not_fit_together(native_step, tiny_model_dir):
    runner = LLM(str(tiny_model_dir), max_num_seqs=4).engine.runner
    model = runner.model
    layer = model.layers[0].native_tensors(*runner.kv_caches[0])
    parts = [model.embed_tokens.weight, model.cos_table, model.sin_table,
             model.norm.weight.float(), model.lm_head.weight]  # fmt: skip
    heads, eps, scale = model.args.num_attention_heads, 1e-6, 0.125
    with pytest.raises(RuntimeError, match="weight shapes do not match"):
        native_step(parts, [[*layer[:3], layer[1], *layer[4:]]], heads, eps, scale)  # o = qkv
    with pytest.raises(RuntimeError, match="all of one dtype"):
        native_step(parts, [[layer[0], layer[1].bfloat16(), *layer[2:]]], heads, eps, scale)
    with pytest.raises(RuntimeError, match="int8 layer weights take 4 scales"):
        int8 = [quantize_per_channel(w)[0] for w in (layer[1], layer[3], layer[5], layer[6])]
        native_step(parts, [[layer[0], int8[0], layer[2], int8[1], layer[4], *int8[2:],
                             *layer[7:]]], heads, eps, scale)  # fmt: skip
    with pytest.raises(RuntimeError, match="9 tensors per layer expected \\(13 with int8"):
        native_step(parts, [layer[:8]], heads, eps, scale)
    with pytest.raises(RuntimeError, match="no layers"):
        native_step(parts, [], heads, eps, scale)


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize(("n", "k"), [(37, 300), (2304, 768)])
def test_gemv_reads_int8_weights_with_their_scales(gemv, rows, n, k):
    """Weight-only int8: the int8 rows widened exactly, summed in float32, then scaled per row:
    F.linear on the dequantized weights."""
    gen = torch.Generator().manual_seed(n + k + rows)
    x, b = torch.randn(rows, k, generator=gen), torch.randn(n, generator=gen)
    q, scale = quantize_per_channel(torch.randn(n, k, generator=gen))
    want = F.linear(x, q.float() * scale[:, None], b)
    torch.testing.assert_close(gemv(x, q, b, scale), want, rtol=1e-5, atol=1e-4)


def test_gemv_refuses_int8_without_its_scales(gemv):
    q, scale = quantize_per_channel(torch.randn(8, 16))
    x = torch.randn(1, 16)
    with pytest.raises(RuntimeError, match="int8 weights take a scale per row"):
        gemv(x, q, None)
    with pytest.raises(RuntimeError, match="int8 weights take a scale per row"):
        gemv(x, q.float(), None, scale)
    with pytest.raises(RuntimeError, match="one float32 scale per weight row"):
        gemv(x, q, None, scale[:7])


def _dequantized_copy(model_dir, out_dir):
    """The model with every decoder-layer weight replaced by its per-channel int8 round trip:
    a float32 engine on it computes what a weight-only int8 engine computes on the original."""
    from safetensors.torch import load_file, save_file

    out_dir.mkdir()
    for f in model_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out_dir / f.name)
    state = load_file(str(model_dir / "model.safetensors"))
    for name, tensor in state.items():
        if name.endswith("proj.weight"):
            q, scale = quantize_per_channel(tensor)
            state[name] = (q.float() * scale[:, None]).to(tensor.dtype)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def test_weight_only_int8_steps_stream_int8_weights(native_step, tiny_model_dir, tmp_path):
    """int8-weight-only engines decode 1-4 rows natively on the int8 weights and their scales:
    the tokens of a float32 engine on the dequantized weights, logprobs within 1e-4. One-token
    prompts, so that every step is native (a longer prefill runs ATen's int8 kernel on bf16
    activations: tokens stay, logprobs move by ~1e-3)."""
    prompts = [[5], [17], [99]]
    int8 = LLM(str(tiny_model_dir), quantization="int8-weight-only", max_num_seqs=4)
    assert int8.engine.describe()["decode_layers"].startswith("native decode steps")
    params = SamplingParams(max_tokens=8, logprobs=3, ignore_eos=True)
    got = int8.generate(prompts, params)
    want = LLM(str(_dequantized_copy(tiny_model_dir, tmp_path / "dq")), max_num_seqs=4)
    for g, w in zip(got, want.generate(prompts, params), strict=True):
        assert g.token_ids == w.token_ids
        gl = [lp.logprob for pos in g.logprobs for lp in pos.values()]
        wl = [lp.logprob for pos in w.logprobs for lp in pos.values()]
        assert max(abs(a - b) for a, b in zip(gl, wl, strict=True)) < 1e-4


def test_w8a8_int8_keeps_the_torch_ops(native_step, tiny_model_dir):
    described = LLM(str(tiny_model_dir), quantization="int8").engine.describe()
    assert described["decode_layers"].startswith("torch ops per layer: int8 linears")
