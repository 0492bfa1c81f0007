"""GEMV blocks (models/gemv_blocks.py): the layout, rewritten in place; the native GEMV and
decode step on blocks give the plain rows' numbers bit for bit; what the engine lays out, what
it leaves (a tied head), what it says; malformed blocks are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from latlab.engine import LLM, SamplingParams
from latlab.engine.hardware import cpu_capabilities
from latlab.engine.kernels import decode_model, small_linear
from latlab.engine.models.gemv_blocks import (
    block_gemv_weights,
    blocks_of,
    fits,
    gemv_weight,
    rows_of,
    to_blocks_in_place,
)
from latlab.engine.models.packed_linear import PackedLinear
from latlab.engine.models.panel_linear import PanelPackedLinear
from latlab.testing.random_model import TINY_TEST, save_random_llama

from ._reference import built_or_skip, mixed_prompts

# The vector GEMV sums blocks in the plain rows' order (AVX2 builds); the portable loop does not
# promise an order for either layout.
VECTOR_GEMV = cpu_capabilities().isa.startswith("AVX")
EXACT = {"rtol": 0, "atol": 0} if VECTOR_GEMV else {"rtol": 1e-5, "atol": 1e-4}


@pytest.fixture(scope="module")
def gemv():
    return built_or_skip(small_linear)


def test_blocks_interleave_four_rows_eight_floats_at_a_time():
    rows = torch.arange(8 * 32, dtype=torch.float32).reshape(8, 32)
    blocks = blocks_of(rows)
    assert blocks.shape == (2, 4, 32)
    assert blocks[0, 0].tolist() == [*range(0, 8), *range(32, 40), *range(64, 72), *range(96, 104)]
    assert blocks[1, 3].tolist()[:8] == list(range(4 * 32 + 24, 4 * 32 + 32))
    assert torch.equal(rows_of(blocks), rows)


def test_blocks_are_written_into_the_weights_own_memory():
    weight = torch.randn(12, 48)
    want, address = blocks_of(weight), weight.data_ptr()
    blocks = to_blocks_in_place(weight)
    assert blocks.data_ptr() == address and torch.equal(blocks, want)


@pytest.mark.parametrize(
    ("shape", "dtype", "ok"),
    [((8, 32), torch.float32, True), ((6, 32), torch.float32, False),
     ((8, 24), torch.float32, False), ((8, 32), torch.bfloat16, False),
     ((8, 1008), torch.float32, True), ((8, 1024), torch.float32, False)],
)  # fmt: skip
def test_only_float32_matrices_of_whole_blocks_with_rows_under_4_kib_fit(shape, dtype, ok):
    assert fits(torch.zeros(shape, dtype=dtype)) is ok


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize(("n", "k"), [(4, 16), (64, 64), (2304, 768), (768, 3072)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_on_blocks_gives_the_plain_rows_numbers(gemv, rows, n, k, bias):
    gen = torch.Generator().manual_seed(n + k + rows)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    torch.testing.assert_close(gemv(x, blocks_of(w), b), gemv(x, w, b), **EXACT)


@pytest.mark.parametrize(
    ("blocks", "message"),
    [(torch.zeros(2, 4, 32).bfloat16(), "all of one dtype|GEMV blocks"),
     (torch.zeros(2, 4, 16), "GEMV blocks"), (torch.zeros(2, 3, 32), "GEMV blocks"),
     (torch.zeros(2, 4, 32)[:, ::2], "contiguous")],
)  # fmt: skip
def test_gemv_refuses_malformed_blocks(gemv, blocks, message):
    with pytest.raises(RuntimeError, match=message):
        gemv(torch.randn(1, blocks.shape[1] * 8), blocks, None)


def test_a_tied_head_and_long_rows_stay_plain_rows():
    """The head of a tied model is the embedding, read by rows: it is not laid out; nor are
    rows of 4 KiB or more."""
    model = nn.Module()
    model.embed = nn.Embedding(16, 32)
    model.head = nn.Linear(32, 16, bias=False)
    model.head.weight = model.embed.weight
    model.proj = nn.Linear(32, 8, bias=False)
    model.wide = nn.Linear(1024, 8, bias=False)  # rows of 4 KiB: faster read as rows
    for name in ("head", "proj", "wide"):
        setattr(model, name, PackedLinear(getattr(model, name), 1, keep_plain=True))
    plain = model.proj.weight.detach().clone()
    report = block_gemv_weights(model)
    assert report.layers == 1 and report.bytes == plain.numel() * 4
    assert report.reason.endswith("; 1 kept as rows (4 KiB rows or longer, or not float32)")
    assert model.proj.weight is None and torch.equal(rows_of(gemv_weight(model.proj)), plain)
    assert model.head.weight is model.embed.weight and gemv_weight(model.head).dim() == 2
    assert gemv_weight(model.wide) is model.wide.weight


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory):
    return save_random_llama(tmp_path_factory.mktemp("untied"), TINY_TEST, seed=3)


def test_the_engine_lays_out_what_the_native_decode_steps_read(untied_dir):
    built_or_skip(decode_model)
    runner = LLM(str(untied_dir)).engine.runner  # packed copies beside, native decode steps
    packed = [m for m in runner.model.modules() if isinstance(m, PackedLinear | PanelPackedLinear)]
    assert packed and all(m.weight is None and gemv_weight(m).dim() == 3 for m in packed)
    described = runner.describe()
    assert described["gemv_weights"].startswith(f"{len(packed)} float32 linears in GEMV blocks")
    plain = LLM(str(untied_dir), packed_linear=False).engine.describe()
    assert plain["gemv_weights"] == "the plan's own (no plain copies beside packed ones)"
    linears = sum(m.in_features * m.out_features * 4 for m in packed)
    assert described["weight_memory_bytes"] - plain["weight_memory_bytes"] == linears  # in place
    off = LLM(str(untied_dir), native_decode=False).engine.describe()
    assert off["gemv_weights"] == "released (no native decode steps)"


def _as_rows(tensor: torch.Tensor) -> torch.Tensor:
    return rows_of(tensor) if tensor.dim() == 3 else tensor


def test_a_decode_step_on_blocks_gives_the_plain_rows_logits(untied_dir):
    """The same step, one decoder on the engine's blocks and one on the same weights as rows:
    the same sums in the same order at 1-4 rows (bit for bit on AVX2)."""
    decoder_class = built_or_skip(decode_model)
    runner = LLM(str(untied_dir)).engine.runner
    model, caches = runner.model, runner.kv_caches
    blocked = model.native_decoder(decoder_class, caches)
    layers = [[_as_rows(t) for t in layer.native_tensors(*kv)]
              for layer, kv in zip(model.layers, caches, strict=True)]  # fmt: skip
    parts = [model.embed_tokens.weight, model.cos_table, model.sin_table,
             model.norm.weight.float(), _as_rows(gemv_weight(model.lm_head))]  # fmt: skip
    attn = model.layers[0].self_attn
    rows = decoder_class(parts, layers, attn.num_heads, model.norm.eps, attn.scale)
    size = runner.block_size
    for m in (1, 2, 3, 4):
        seq = torch.arange(m)
        inputs = {"ids": seq + 5, "positions": seq * 0, "slots": seq * size, "logit_rows": seq,
                  "block_tables": seq[:, None], "seq_lens": seq * 0 + 1}  # fmt: skip
        torch.testing.assert_close(blocked.step(**inputs), rows.step(**inputs), **EXACT)


def test_engine_tokens_and_logprobs_match_the_plain_rows_engine(untied_dir):
    """Blocks (packed copies for prefill) against plain rows everywhere: the same tokens; the
    logprobs within prefill's GEMM rounding."""
    built_or_skip(decode_model)
    params = SamplingParams(max_tokens=8, logprobs=3, ignore_eos=True)
    blocks, plain = LLM(str(untied_dir)), LLM(str(untied_dir), packed_linear=False)
    for batch in ([mixed_prompts(1)[0]], mixed_prompts(3), mixed_prompts(4)):
        got, want = blocks.generate(batch, params), plain.generate(batch, params)
        assert [o.token_ids for o in got] == [o.token_ids for o in want]
        got_lp = [lp.logprob for o in got for pos in o.logprobs for lp in pos.values()]
        want_lp = [lp.logprob for o in want for pos in o.logprobs for lp in pos.values()]
        torch.testing.assert_close(torch.tensor(got_lp), torch.tensor(want_lp), rtol=0, atol=1e-4)


def test_a_layer_of_blocks_and_long_rows_decodes_as_the_plain_rows_engine(tmp_path):
    """down's rows of 4 KiB stay rows beside the other weights' blocks, in one decode step."""
    built_or_skip(decode_model)
    shape = dataclasses.replace(TINY_TEST, intermediate_size=1024)
    model_dir = save_random_llama(tmp_path, shape, seed=5)
    mixed = LLM(str(model_dir))
    down = mixed.engine.runner.model.layers[0].mlp.down_proj
    qkv = mixed.engine.runner.model.layers[0].self_attn.qkv_proj
    assert gemv_weight(down).dim() == 2 and gemv_weight(qkv).dim() == 3
    params = SamplingParams(max_tokens=8, logprobs=2, ignore_eos=True)
    batch = mixed_prompts(2)
    got = mixed.generate(batch, params)
    want = LLM(str(model_dir), packed_linear=False).generate(batch, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    got_lp = [lp.logprob for o in got for pos in o.logprobs for lp in pos.values()]
    want_lp = [lp.logprob for o in want for pos in o.logprobs for lp in pos.values()]
    torch.testing.assert_close(torch.tensor(got_lp), torch.tensor(want_lp), rtol=0, atol=1e-4)
