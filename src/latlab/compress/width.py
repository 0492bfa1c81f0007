"""Width pruning: MLP channels and whole KV groups, ranked by activation magnitude.

What is pruned, and why only this:
- **MLP channels** (the intermediate dimension of a gate/up/down MLP): channel c of layer l is
  ranked by the mean |activation| entering ``down_proj`` on calibration text (the activation
  criterion of Minitron, Muralidharan et al. 2024, "Compact Language Models via Pruning and
  Knowledge Distillation"). Every layer keeps its own top channels, but the *same number* in
  every layer, because an HF config has one ``intermediate_size``; a checkpoint with per-layer
  widths would load nowhere.
- **Attention heads, one KV group at a time**: with grouped-query attention, each K/V head is
  shared by ``num_attention_heads / num_key_value_heads`` query heads; removing a query head
  alone would leave an uneven group no kernel supports. A group is ranked by the mean norm of
  its query heads' output entering ``o_proj``; the same number of groups goes in every layer
  (one ``num_key_value_heads`` in the config), and ``head_dim`` is written explicitly.

Both keep the checkpoint loadable by every backend; neither is a speedup by itself unless
the removed share is large (a narrower matmul is only cheaper once it drops below the size
where per-call overhead dominates).
"""

from __future__ import annotations

from typing import Any

import torch

from latlab.compress.calibration import ChannelMagnitudes, decoder_layers, linear_at
from latlab.errors import ConfigError

CHANNEL_MULTIPLE = 8  # kept MLP widths round to this, for matmul-friendly shapes


def _slice_linear(linear: torch.nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep rows (dim 0: output features) or columns (dim 1: input features) ``keep``."""
    weight = linear.weight.data.index_select(dim, keep.to(linear.weight.device)).clone()
    linear.weight = torch.nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if dim == 0 and linear.bias is not None:
        bias = linear.bias.data.index_select(0, keep.to(linear.bias.device)).clone()
        linear.bias = torch.nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    linear.out_features, linear.in_features = weight.shape


def kept_channels(width: int, remove_fraction: float) -> int:
    """How many MLP channels remain; ConfigError unless some go and some stay."""
    if not 0.0 < remove_fraction < 1.0:
        raise ConfigError(
            f"mlp_fraction (the share of MLP channels to remove) must be between 0 and 1, "
            f"not {remove_fraction}"
        )
    keep = round(width * (1.0 - remove_fraction))
    if width >= 8 * CHANNEL_MULTIPLE:
        keep = max(CHANNEL_MULTIPLE, CHANNEL_MULTIPLE * round(keep / CHANNEL_MULTIPLE))
    if keep < 1 or keep >= width:
        raise ConfigError(
            f"removing {remove_fraction:.0%} of {width} MLP channels leaves {keep}: "
            "choose a fraction that removes some and keeps some"
        )
    return keep


def prune_mlp_channels(model: Any, magnitudes: ChannelMagnitudes, remove_fraction: float) -> int:
    """Remove the weakest MLP channels of every layer in place; returns the width kept."""
    layers = decoder_layers(model)
    width = int(model.config.intermediate_size)
    keep_count = kept_channels(width, remove_fraction)
    for index, layer in enumerate(layers):
        keep = magnitudes.mlp[index].topk(keep_count).indices.sort().values
        _slice_linear(linear_at(layer, "mlp.gate_proj"), keep, 0)
        _slice_linear(linear_at(layer, "mlp.up_proj"), keep, 0)
        _slice_linear(linear_at(layer, "mlp.down_proj"), keep, 1)
    model.config.intermediate_size = keep_count
    return keep_count


def _head_shape(config: Any) -> tuple[int, int, int]:
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv_heads, head_dim


def _rows_of(units: list[int], size: int) -> torch.Tensor:
    return torch.tensor([u * size + k for u in units for k in range(size)], dtype=torch.long)


def prune_kv_groups(model: Any, magnitudes: ChannelMagnitudes, groups: int) -> int:
    """Remove ``groups`` KV groups (with their query heads) from every layer; returns kept."""
    heads, kv_heads, head_dim = _head_shape(model.config)
    if groups < 1 or groups >= kv_heads:
        raise ConfigError(
            f"cannot remove {groups} of the model's {kv_heads} KV groups: remove 1 to "
            f"{kv_heads - 1} (a model with one KV head has no group to spare)"
        )
    per_group = heads // kv_heads
    kept_groups = kv_heads - groups
    for index, layer in enumerate(decoder_layers(model)):
        strength = magnitudes.attention[index].view(kv_heads, per_group * head_dim).sum(-1)
        keep = sorted(strength.topk(kept_groups).indices.tolist())
        query_heads = [g * per_group + q for g in keep for q in range(per_group)]
        _slice_linear(linear_at(layer, "self_attn.q_proj"), _rows_of(query_heads, head_dim), 0)
        _slice_linear(linear_at(layer, "self_attn.k_proj"), _rows_of(keep, head_dim), 0)
        _slice_linear(linear_at(layer, "self_attn.v_proj"), _rows_of(keep, head_dim), 0)
        _slice_linear(linear_at(layer, "self_attn.o_proj"), _rows_of(query_heads, head_dim), 1)
    model.config.num_attention_heads = kept_groups * per_group
    model.config.num_key_value_heads = kept_groups
    model.config.head_dim = head_dim
    return kept_groups
