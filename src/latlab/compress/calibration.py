"""What pruning decisions are based on: statistics of a model's activations on calibration text.

Two kinds, both gathered with forward hooks in one pass per window:
- the residual stream between decoder layers (the input of layer i is ``h[i]``, the output of
  the last layer ``h[L]``), from which the layer scores of ``layers`` are computed;
- the mean magnitude of each channel entering the MLP's down projection and each attention
  head's output entering ``o_proj``, from which ``width`` ranks channels and KV groups.

Windows are cut from the calibration corpus (never from the held-out text the quality gate
scores), and position 0 of each window is left out: its state is the attention sink every
sequence has, not something a layer computes from context.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from latlab.errors import ConfigError


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder's layer list (Llama, Qwen2, Mistral and other HF decoder-only models)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
        raise ConfigError(
            f"{type(model).__name__} has no decoder layer list (model.model.layers); layer "
            "pruning supports HF decoder-only models such as Llama, Qwen2 and Mistral"
        )
    return layers


def calibration_windows(stream: torch.Tensor, window: int, count: int) -> list[torch.Tensor]:
    """Up to ``count`` evenly spaced windows of ``window`` tokens from a token stream."""
    window = max(2, min(window, len(stream)))
    span = len(stream) - window
    if count <= 1 or span <= 0:
        return [stream[:window]]
    starts = sorted({round(i * span / (count - 1)) for i in range(count)})
    return [stream[s : s + window] for s in starts]


def _hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def residual_states(model: Any, windows: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Per window: [h_0, ..., h_L], each (tokens - 1, hidden) in float32 on the CPU."""
    layers = decoder_layers(model)
    captured: list[torch.Tensor] = []

    def before(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not captured:
            captured.append(_hidden_of(args, kwargs))

    def after(_module: Any, _args: Any, _kwargs: Any, output: Any) -> None:
        captured.append(_first(output))

    handles = [layers[0].register_forward_pre_hook(before, with_kwargs=True)]
    handles += [layer.register_forward_hook(after, with_kwargs=True) for layer in layers]
    try:
        for ids in windows:
            captured.clear()
            model(input_ids=ids.unsqueeze(0).to(model.device), use_cache=False)
            yield [h[0, 1:].float().cpu() for h in captured]
    finally:
        for handle in handles:
            handle.remove()


@dataclass(kw_only=True, slots=True)
class ChannelMagnitudes:
    """Mean |activation| per channel entering each layer's down_proj and o_proj."""

    mlp: list[torch.Tensor] = field(default_factory=list)  # per layer: (intermediate,)
    attention: list[torch.Tensor] = field(default_factory=list)  # per layer: (heads * head_dim,)
    tokens: int = 0


def linear_at(layer: Any, path: str) -> torch.nn.Linear:
    module = layer
    for part in path.split("."):
        module = getattr(module, part, None)
    if not isinstance(module, torch.nn.Linear):
        raise ConfigError(
            f"width pruning needs {path} in every decoder layer (Llama-style attention and "
            f"gate/up/down MLP); {type(layer).__name__} has none"
        )
    return module


@torch.inference_mode()
def channel_magnitudes(model: Any, windows: list[torch.Tensor]) -> ChannelMagnitudes:
    """Sum |x| per input channel of down_proj and o_proj over the windows, then the mean."""
    layers = decoder_layers(model)
    sums: dict[tuple[str, int], torch.Tensor] = {}

    def hook(key: tuple[str, int]) -> Any:
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0][0, 1:].float().abs().sum(0).cpu()
            sums[key] = sums[key] + x if key in sums else x

        return record

    handles = []
    for i, layer in enumerate(layers):
        for kind, path in (("mlp", "mlp.down_proj"), ("att", "self_attn.o_proj")):
            handles.append(linear_at(layer, path).register_forward_pre_hook(hook((kind, i))))
    tokens = 0
    try:
        for ids in windows:
            model(input_ids=ids.unsqueeze(0).to(model.device), use_cache=False)
            tokens += len(ids) - 1
    finally:
        for handle in handles:
            handle.remove()
    count = max(tokens, 1)
    return ChannelMagnitudes(
        mlp=[sums[("mlp", i)] / count for i in range(len(layers))],
        attention=[sums[("att", i)] / count for i in range(len(layers))],
        tokens=tokens,
    )
