"""What a decode step must read and compute, and what this machine delivers: the roofline.

A decode step at batch B reads every weight once (shared by the B tokens) plus each sequence's
cached K/V, and computes 2 FLOPs per weight per token plus attention over the context. Bytes
over measured memory bandwidth and FLOPs over the measured GEMM rate of the engine's own linear
kernels at that batch give the fastest a step can be; the engine's tok/s against that is the
share of the hardware it reaches. Weight bytes are counted as the engine holds them (packed
float32 copies, int8 with scales), not as the checkpoint stores them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from latlab.engine.models.amx_linear import AmxPackedLinear
from latlab.engine.models.gemv_blocks import gemv_weight
from latlab.engine.models.int8_linear import Int8Linear
from latlab.engine.models.packed_linear import PackedLinear
from latlab.engine.models.panel_linear import PanelPackedLinear

PACKED_TYPES = (PackedLinear, PanelPackedLinear)  # the copy a step reads: its bytes count
LINEAR_TYPES = (nn.Linear, *PACKED_TYPES, AmxPackedLinear, Int8Linear)


@dataclass(kw_only=True, slots=True, frozen=True)
class DecodeCost:
    """Bytes and FLOPs of one decode token at a given batch and mean context length."""

    batch: int
    context: int
    weight_bytes: int  # read once per step, shared by the batch
    kv_bytes_per_cached_token: int  # K and V of one position, all layers
    linear_flops_per_token: int
    attention_flops_per_token: int

    @property
    def bytes_per_token(self) -> float:
        return self.weight_bytes / self.batch + self.context * self.kv_bytes_per_cached_token

    @property
    def flops_per_token(self) -> int:
        return self.linear_flops_per_token + self.attention_flops_per_token

    def as_dict(self) -> dict[str, float]:
        return {
            "batch": self.batch,
            "context": self.context,
            "weight_bytes": self.weight_bytes,
            "kv_bytes_per_cached_token": self.kv_bytes_per_cached_token,
            "bytes_per_token": self.bytes_per_token,
            "flops_per_token": self.flops_per_token,
            "linear_flops_per_token": self.linear_flops_per_token,
        }


def linear_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, LINEAR_TYPES)]


def _layer_bytes(module: nn.Module) -> int:
    """Bytes one pass over the layer reads (its weight as stored, scales, bias)."""
    n = module.in_features * module.out_features
    bias = getattr(module, "bias", None)
    extra = 0 if bias is None else bias.numel() * bias.element_size()
    if isinstance(module, Int8Linear):
        return n + module.out_features * 4 + extra
    weight = module.packed_weight if isinstance(module, PACKED_TYPES) else module.weight
    return n * weight.element_size() + extra


def decode_cost(
    model: nn.Module, *, batch: int, context: int, kv_bytes_per_cached_token: int
) -> DecodeCost:
    """The cost of one decode token for ``model`` (a LlamaForCausalLM) as the engine holds it."""
    args = model.args
    layers = linear_layers(model)
    norms = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "norm" in n)
    q_dim = args.num_attention_heads * args.head_dim
    return DecodeCost(
        batch=batch,
        context=context,
        weight_bytes=sum(_layer_bytes(m) for m in layers) + norms,
        kv_bytes_per_cached_token=kv_bytes_per_cached_token,
        linear_flops_per_token=2 * sum(m.in_features * m.out_features for m in layers),
        attention_flops_per_token=4 * context * q_dim * args.num_hidden_layers,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (first-touch pages, kernel selection)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_read_bandwidth(
    device: torch.device, nbytes: int = 512 << 20, repeats: int = 7
) -> float:
    """Bytes/s of a streaming read (a sum over a buffer far larger than the caches)."""
    buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    seconds = _median_seconds(buf.sum, device, repeats)
    return buf.numel() * 4 / seconds


def measure_linear_rate(
    model: nn.Module,
    *,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    repeats: int = 5,
    linear: Callable[..., torch.Tensor] | None = None,
) -> float:
    """FLOP/s of the model's own linear layers (same kernels, same shapes) at ``batch`` rows.

    ``linear(x, weight, bias[, scale])`` replaces the modules' own forward where the engine runs
    these shapes through another kernel (the native GEMV of 1-4 row decode steps; int8 layers
    pass their int8 rows and scales; float32 layers the GEMV's own weights, GEMV blocks where
    the engine laid them out so).
    """
    layers = linear_layers(model)
    act = dtype if linear is None else torch.float32  # the native GEMV's rows are float32
    inputs = {m.in_features: torch.randn(batch, m.in_features, dtype=act, device=device)
              for m in layers}  # fmt: skip
    biases = [None if m.bias is None else m.bias.float() for m in layers]

    def run() -> None:
        with torch.inference_mode():
            for m, bias in zip(layers, biases, strict=True):
                x = inputs[m.in_features]
                if linear is None:
                    m(x)
                elif hasattr(m, "qweight"):  # weight-only int8: the rows and their scales
                    linear(x, m.qweight, bias, m.scale)
                else:
                    linear(x, gemv_weight(m), bias)

    seconds = _median_seconds(run, device, repeats)
    return 2 * batch * sum(m.in_features * m.out_features for m in layers) / seconds


def measure_matmul_rate(
    size: int, *, dtype: torch.dtype, device: torch.device, repeats: int = 5
) -> float:
    """FLOP/s of one square matmul (the machine's best case for ``dtype``)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    seconds = _median_seconds(lambda: a @ b, device, repeats)
    return 2 * size**3 / seconds
