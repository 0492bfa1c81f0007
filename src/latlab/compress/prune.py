"""One call from a model to its pruned copy: calibrate, score, cut, and say what was cut.

Used by ``latlab prune``, the ``prune-layers``/``prune-width`` recipes and by ``latlab
distill`` (a student initialised as the teacher minus its least useful layers). The model
given is never modified: the pruned model is a deep copy.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

from latlab.compress.calibration import calibration_windows, channel_magnitudes, decoder_layers
from latlab.compress.corpus import CorpusText, token_stream
from latlab.compress.layers import (
    METHODS,
    choose_layers,
    layers_to_remove,
    remove_layers,
    score_layers,
)
from latlab.compress.width import prune_kv_groups, prune_mlp_channels
from latlab.errors import ConfigError


@dataclass(kw_only=True, slots=True, frozen=True)
class PruneSpec:
    """What to remove. Layers by count or fraction; width by MLP share and KV groups."""

    layers: int | None = None
    layer_fraction: float | None = None
    method: str = "angular"  # or "block-influence"
    mlp_fraction: float | None = None  # share of MLP channels to remove, per layer
    kv_groups: int | None = None  # KV groups (with their query heads) to remove, per layer
    calibration_windows: int = 16
    calibration_tokens: int = 128

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not (self.prunes_layers or self.mlp_fraction or self.kv_groups):
            raise ConfigError(
                "nothing to prune: give layers (a count), layer_fraction, mlp_fraction or kv_groups"
            )
        if self.calibration_windows < 1 or self.calibration_tokens < 2:
            raise ConfigError("calibration needs at least 1 window of at least 2 tokens")

    @property
    def prunes_layers(self) -> bool:
        return self.layers is not None or self.layer_fraction is not None

    def describe(self) -> str:
        parts = []
        if self.layers is not None:
            parts.append(f"{self.layers} layer(s) by {self.method}")
        if self.layer_fraction is not None:
            parts.append(f"{self.layer_fraction:.0%} of layers by {self.method}")
        if self.mlp_fraction:
            parts.append(f"{self.mlp_fraction:.0%} of MLP channels")
        if self.kv_groups:
            parts.append(f"{self.kv_groups} KV group(s)")
        return ", ".join(parts)


def check_spec(spec: PruneSpec, num_layers: int) -> int | None:
    """The layer count to remove (None for width only); ConfigError before any work."""
    if not spec.prunes_layers:
        return None
    return layers_to_remove(num_layers, spec.layers, spec.layer_fraction)


def prune_model(
    model: Any, tokenizer: Any, spec: PruneSpec, corpus: CorpusText
) -> tuple[Any, dict[str, Any]]:
    """A pruned deep copy of ``model`` and a report of the scores and of what was removed."""
    num_layers = len(decoder_layers(model))
    n = check_spec(spec, num_layers)
    # ~8 characters per window token: more text than the windows need, from all of the corpus
    sample = corpus.spread(8 * spec.calibration_windows * spec.calibration_tokens)
    stream = token_stream(tokenizer, sample, min_tokens=spec.calibration_tokens + 1)
    windows = calibration_windows(stream, spec.calibration_tokens, spec.calibration_windows)
    pruned = copy.deepcopy(model)
    report: dict[str, Any] = {
        "spec": asdict(spec),
        "calibration": {"corpus": corpus.source, "windows": len(windows)},
        "before": model_shape(model.config),
    }
    if n is not None:
        scores = score_layers(pruned, windows)
        drop = choose_layers(scores, n, spec.method)
        remove_layers(pruned, drop)
        report["layers"] = {"removed": drop, "scores": scores.to_dict()}
    if spec.mlp_fraction or spec.kv_groups:
        magnitudes = channel_magnitudes(pruned, windows)
        if spec.mlp_fraction:
            report["mlp_channels_kept"] = prune_mlp_channels(pruned, magnitudes, spec.mlp_fraction)
        if spec.kv_groups:
            report["kv_groups_kept"] = prune_kv_groups(pruned, magnitudes, spec.kv_groups)
    report["after"] = model_shape(pruned.config)
    return pruned.eval(), report


def model_shape(config: Any) -> dict[str, Any]:
    keys = ("num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    return {k: getattr(config, k, None) for k in keys}


def parameter_count(model: Any) -> int:
    """Parameters, tied embeddings once."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total
