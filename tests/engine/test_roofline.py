"""Bytes and FLOPs per decode token, counted from the model as the engine holds it."""

from __future__ import annotations

import torch

from latlab.engine import LLM
from latlab.engine.models.gemv_blocks import gemv_weight, rows_of
from latlab.engine.roofline import (
    decode_cost,
    linear_layers,
    measure_linear_rate,
    measure_matmul_rate,
    measure_read_bandwidth,
)

CPU = torch.device("cpu")
# TINY_TEST: hidden 64, 2 layers, 4 heads (head_dim 16), 2 KV heads, MLP 128, vocab 4096+
LAYER_PARAMS = 64 * (64 + 2 * 32) + 64 * 64 + 64 * 256 + 128 * 64


def _model(tiny_model_dir, **config):
    llm = LLM(str(tiny_model_dir), **config)
    return llm.engine.runner.model, llm.engine


def test_float32_cost_counts_every_linear_weight_once_per_step(tiny_model_dir):
    model, engine = _model(tiny_model_dir)
    vocab = engine.model_args.vocab_size
    linear = 2 * LAYER_PARAMS + 64 * vocab
    cost = decode_cost(model, batch=4, context=10, kv_bytes_per_cached_token=1024)
    assert cost.linear_flops_per_token == 2 * linear
    assert cost.attention_flops_per_token == 4 * 10 * 64 * 2
    norms = (2 * 2 + 1) * 64 * 4
    assert cost.weight_bytes == 4 * linear + norms
    assert cost.bytes_per_token == cost.weight_bytes / 4 + 10 * 1024


def test_int8_weights_count_one_byte_plus_scales(tiny_model_dir):
    fp32, _ = _model(tiny_model_dir)
    int8, _ = _model(tiny_model_dir, quantization="int8")
    args = dict(batch=1, context=1, kv_bytes_per_cached_token=0)
    saved = decode_cost(fp32, **args).weight_bytes - decode_cost(int8, **args).weight_bytes
    scales = 4 * 2 * (64 + 2 * 32 + 64 + 256 + 64)  # one float32 per output channel
    assert saved == 3 * 2 * LAYER_PARAMS - scales  # the head stays float32
    assert decode_cost(int8, **args).flops_per_token == decode_cost(fp32, **args).flops_per_token


def test_measurements_return_rates(tiny_model_dir):
    model, _ = _model(tiny_model_dir)
    assert measure_read_bandwidth(CPU, nbytes=8 << 20, repeats=2) > 1e8
    assert measure_linear_rate(model, batch=4, dtype=torch.float32, device=CPU, repeats=2) > 1e6
    assert measure_matmul_rate(64, dtype=torch.float32, device=CPU, repeats=2) > 1e6


def test_linear_rate_runs_the_kernel_it_is_given_on_every_layer(tiny_model_dir):
    """The rate of the kernel the engine really uses (the native GEMV of small decode steps),
    on the weights it reads (GEMV blocks for the layers laid out so; the tied head's rows)."""
    model, _ = _model(tiny_model_dir)
    shapes = []

    def linear(x, weight, bias):
        shapes.append((x.shape[0], tuple(weight.shape)))
        rows = rows_of(weight) if weight.dim() == 3 else weight
        return torch.nn.functional.linear(x, rows, bias)

    rate = measure_linear_rate(
        model, batch=2, dtype=torch.float32, device=CPU, repeats=1, linear=linear
    )
    layers = linear_layers(model)
    assert rate > 1e6 and len(shapes) >= len(layers)
    assert set(shapes) == {(2, tuple(gemv_weight(m).shape)) for m in layers}
    assert 3 in {len(shape) for _, shape in shapes}  # GEMV blocks where laid out


def test_linear_rate_hands_int8_layers_their_rows_and_scales(tiny_model_dir):
    """Weight-only int8 engines' small decode steps run the native GEMV on the int8 rows and
    their scales: the rate is measured on those, the head on its plain weight."""
    model, _ = _model(tiny_model_dir, quantization="int8-weight-only")
    calls = []

    def linear(x, weight, bias, scale=None):
        calls.append((weight.dtype, scale is not None))
        return torch.nn.functional.linear(
            x, weight.float() * (1 if scale is None else scale[:, None]), bias
        )

    measure_linear_rate(model, batch=1, dtype=torch.float32, device=CPU, repeats=1, linear=linear)
    assert set(calls) == {(torch.int8, True), (torch.float32, False)}
