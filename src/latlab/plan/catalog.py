"""Model and device catalogs shipped as JSON, plus reading a config.json from disk.

A model is named three ways: a catalog name ("Llama-3.1-8B"), a config.json path, or a
model directory. Unknown names fail with the closest catalog names, so a typo costs one
retry instead of a search.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from latlab.errors import ConfigError

_DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model config ready for the planner, with where it came from."""

    name: str
    config: dict[str, Any]
    source: str


@dataclass(frozen=True, slots=True)
class Device:
    """An accelerator by total memory as its driver reports it."""

    name: str
    memory_bytes: int
    sold_as: str


@cache
def _load(filename: str) -> dict[str, Any]:
    with open(_DATA_DIR / filename, encoding="utf-8") as handle:
        return json.load(handle)


def _model_entries() -> list[dict[str, Any]]:
    return _load("models.json")["models"]


def model_names() -> list[str]:
    """Catalog model names in catalog order."""
    return [entry["name"] for entry in _model_entries()]


def device_names() -> list[str]:
    """Catalog device names in catalog order."""
    return [entry["name"] for entry in _load("devices.json")["devices"]]


def close_matches(name: str, choices: list[str]) -> list[str]:
    """Up to three choices that look like ``name`` (case-insensitive)."""
    lowered = {choice.lower(): choice for choice in choices}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.4)
    return [lowered[item] for item in found]


def _unknown(kind: str, name: str, choices: list[str]) -> ConfigError:
    matches = close_matches(name, choices)
    hint = f"did you mean {', '.join(matches)}? " if matches else ""
    return ConfigError(f"unknown {kind} {name!r}; {hint}known: {', '.join(choices)}")


def get_device(name: str) -> Device:
    """A catalog device by name (case-insensitive); ConfigError with close matches."""
    for entry in _load("devices.json")["devices"]:
        if entry["name"].lower() == name.lower():
            return Device(entry["name"], int(entry["memory_bytes"]), entry["sold_as"])
    raise _unknown("device", name, device_names())


def get_device_price(name: str) -> dict[str, Any]:
    """A catalog device's list price: usd_per_hour, source, as_of and the device's name;
    ConfigError when none is recorded."""
    device = get_device(name)
    entry = next(e for e in _load("devices.json")["devices"] if e["name"] == device.name)
    price = entry.get("price")
    if not price:
        priced = [e["name"] for e in _load("devices.json")["devices"] if e.get("price")]
        raise ConfigError(
            f"the catalog records no list price for {device.name}; pass --price-per-hour USD, "
            f"or a device with a price: {', '.join(priced)}"
        )
    return {**price, "device": device.name}


def get_catalog_model(name: str) -> ModelSpec:
    """A catalog model by name (case-insensitive); ConfigError with close matches."""
    for entry in _model_entries():
        if entry["name"].lower() == name.lower():
            if "asset" in entry:
                return _asset_model(entry["name"], entry["asset"])
            return ModelSpec(entry["name"], dict(entry["config"]), entry["source"])
    raise _unknown("model", name, model_names())


def _asset_model(name: str, asset: str) -> ModelSpec:
    """A bundled model's config, read from the package so the catalog never drifts from it."""
    from latlab.assets import bundled_model_path

    path = bundled_model_path().parent / asset / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"the bundled model {name!r} has no config.json at {path}; this install lacks "
            "the model files (reinstall latlab, or pass a config.json path instead)"
        )
    return ModelSpec(name, read_config_file(path), f"bundled asset {path}")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config.json as a dict; the text config of multimodal models is used directly."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read model config {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ConfigError(f"model config {path} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"model config {path} is not UTF-8 text ({exc.reason})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"model config {path} must hold a JSON object")
    text_config = config.get("text_config")
    if "num_hidden_layers" not in config and isinstance(text_config, dict):
        config = {**text_config, "model_type": text_config.get("model_type", "")}
    check_config_numbers(config, str(path))
    return config


# Shape fields the planner multiplies: each must be a positive integer when present (null is
# "not used" for the optional ones).
_POSITIVE_INT_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "vocab_size", "head_dim", "max_position_embeddings", "kv_lora_rank",
    "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "num_local_experts",
    "num_experts_per_tok", "n_routed_experts", "moe_intermediate_size", "sliding_window",
    "moe_layer_freq",
)  # fmt: skip
_COUNT_FIELDS = ("n_shared_experts", "first_k_dense_replace")  # may be 0


def check_config_numbers(config: Mapping[str, Any], source: str) -> None:
    """ConfigError naming the first shape field that is not a sane integer ("four", -2)."""
    for name in (*_POSITIVE_INT_FIELDS, *_COUNT_FIELDS):
        value = config.get(name)
        if value is None:
            continue
        least = 1 if name in _POSITIVE_INT_FIELDS else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            kind = "a positive integer" if least else "an integer >= 0"
            raise ConfigError(f"{source}: {name} must be {kind}, got {value!r}")


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or os.sep in text or text.endswith(".json")


def resolve_model(model: str | os.PathLike[str] | Mapping[str, Any]) -> ModelSpec:
    """A ModelSpec from a catalog name, a config.json path, a model dir, or a config dict."""
    if isinstance(model, Mapping):
        name = str(model.get("_name_or_path") or model.get("model_type") or "config")
        check_config_numbers(model, "the config passed in")
        return ModelSpec(name, dict(model), "config passed in")
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ConfigError(f"model directory {path} has no config.json")
        return ModelSpec(path.name, read_config_file(config_path), str(config_path))
    if path.is_file():
        return ModelSpec(path.parent.name or path.stem, read_config_file(path), str(path))
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return _hub_id(text)
    if _looks_like_path(text):
        raise ConfigError(f"model path {text!r} does not exist")
    return get_catalog_model(text)


def _hub_id(text: str) -> ModelSpec:
    """'meta-llama/Llama-3.1-8B': the catalog entry of that name (the planner never downloads)."""
    try:
        return get_catalog_model(text.split("/")[1])
    except ConfigError as exc:
        raise ConfigError(
            f"{text!r} is not a local path and latlab plan does not download configs; pass a "
            f"config.json or a model dir, or a catalog name ({exc})"
        ) from None
