"""Layer pruning: remove the decoder layers whose removal changes the residual stream least.

Two published scores, computed here from the residual stream on calibration text
(``calibration.residual_states``; h_i is the input of layer i, h_L the last layer's output):

- ``angular`` (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"):
  for a block of n consecutive layers starting at l, the angular distance
  arccos(cos(h_l, h_{l+n})) / pi; the block with the smallest distance goes, the deeper one
  on a tie. The paper uses each sequence's last token; here every token but the first counts,
  which gives more samples from short calibration windows.
- ``block-influence`` (Men et al. 2024, "ShortGPT"): per layer, BI_i = 1 - E[cos(h_i,
  h_{i+1})]; the n layers with the lowest influence go, wherever they are.

``remove_layers`` edits the model so that config and weights agree: the layer list shrinks,
the kept layers are renumbered (their KV-cache slot is their index), ``num_hidden_layers`` and
per-layer config lists (``layer_types``) follow. ``save_pretrained`` then writes a checkpoint
any backend loads (transformers, latlab's engine, vLLM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from latlab.compress.calibration import decoder_layers, residual_states
from latlab.errors import ConfigError

METHODS = ("angular", "block-influence")


@dataclass(kw_only=True, slots=True)
class LayerScores:
    """Mean angular distance between every pair of residual-stream states, and BI per layer."""

    num_layers: int
    angular: dict[tuple[int, int], float] = field(default_factory=dict)  # (i, j), i < j
    block_influence: list[float] = field(default_factory=list)
    tokens: int = 0

    def block_distance(self, start: int, n: int) -> float:
        """Angular distance across layers start .. start + n - 1 (0..1, as a fraction of pi)."""
        return self.angular[(start, start + n)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "tokens": self.tokens,
            "angular_distance": {f"{i}->{j}": round(v, 6) for (i, j), v in self.angular.items()},
            "block_influence": [round(v, 6) for v in self.block_influence],
        }


def score_layers(model: Any, windows: list[torch.Tensor]) -> LayerScores:
    """Both scores over the calibration windows, in one forward pass per window."""
    num_layers = len(decoder_layers(model))
    angle_sums: dict[tuple[int, int], float] = {}
    influence_sums = [0.0] * num_layers
    tokens = 0
    for states in residual_states(model, windows):
        unit = [torch.nn.functional.normalize(h, dim=-1) for h in states]
        for i in range(num_layers):
            for j in range(i + 1, num_layers + 1):
                cos = (unit[i] * unit[j]).sum(-1).clamp(-1.0, 1.0)
                angle = float(torch.arccos(cos).sum()) / math.pi
                angle_sums[(i, j)] = angle_sums.get((i, j), 0.0) + angle
                if j == i + 1:
                    influence_sums[i] += float((1.0 - cos).sum())
        tokens += states[0].shape[0]
    if not tokens:
        raise ConfigError("layer scores need calibration windows of at least 2 tokens")
    return LayerScores(
        num_layers=num_layers,
        angular={k: v / tokens for k, v in angle_sums.items()},
        block_influence=[v / tokens for v in influence_sums],
        tokens=tokens,
    )


def layers_to_remove(num_layers: int, n: int | None = None, fraction: float | None = None) -> int:
    """How many layers a count or a fraction means; ConfigError unless 1 <= n < num_layers."""
    if (n is None) == (fraction is None):
        raise ConfigError("give the number of layers to remove or a fraction of them, not both")
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"fraction must be between 0 and 1 (exclusive), not {fraction}")
        n = max(1, round(fraction * num_layers))
    assert n is not None
    if n < 1 or n >= num_layers:
        raise ConfigError(
            f"cannot remove {n} of the model's {num_layers} layers: at least one layer must "
            f"remain and one must go (remove 1 to {num_layers - 1})"
        )
    return n


def choose_layers(scores: LayerScores, n: int, method: str = "angular") -> list[int]:
    """Indices of the n layers to remove, in ascending order."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    layers_to_remove(scores.num_layers, n)
    if method == "angular":
        starts = range(scores.num_layers - n + 1)
        best = min(starts, key=lambda s: (scores.block_distance(s, n), -s))
        return list(range(best, best + n))
    ranked = sorted(range(scores.num_layers), key=lambda i: (scores.block_influence[i], -i))
    return sorted(ranked[:n])


def remove_layers(model: Any, drop: list[int]) -> Any:
    """Remove the listed decoder layers in place; config and weights stay consistent."""
    layers = decoder_layers(model)
    total = len(layers)
    if not drop or len(set(drop)) >= total or any(not 0 <= i < total for i in drop):
        raise ConfigError(f"cannot remove layers {drop} of {total}: keep at least one")
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    for index, layer in enumerate(kept):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = index
    model.get_decoder().layers = torch.nn.ModuleList(kept)
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == total:
        config.layer_types = [t for i, t in enumerate(layer_types) if i not in set(drop)]
    config.num_hidden_layers = len(kept)
    return model
