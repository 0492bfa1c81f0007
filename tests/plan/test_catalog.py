"""Catalogs, config files on disk, memory sizes, and the errors for each bad input."""

import json
import math
import struct

import pytest

import latlab.assets
from latlab.errors import ConfigError
from latlab.plan.catalog import (
    device_names,
    get_catalog_model,
    get_device,
    model_names,
    resolve_model,
)
from latlab.plan.kv import kv_bytes_per_token
from latlab.plan.units import format_bytes, parse_bytes
from latlab.plan.weights import count_parameters


def test_catalog_holds_the_models_the_issue_names():
    assert model_names() == [
        "Llama-3.1-8B",
        "Llama-3.1-70B",
        "Qwen2.5-7B",
        "Qwen2.5-72B",
        "Mistral-7B-v0.1",
        "Gemma-2-9B",
        "Mixtral-8x7B",
        "DeepSeek-V2-Lite",
        "tiny-llama",
    ]


def test_every_catalog_entry_cites_its_config_source():
    for name in model_names()[:-1]:
        spec = get_catalog_model(name)
        assert spec.source.startswith("https://huggingface.co/")
        assert spec.source.endswith("/config.json")


def test_lookup_is_case_insensitive():
    assert get_catalog_model("llama-3.1-8b").name == "Llama-3.1-8B"
    assert get_device("h100-80gb").name == "H100-80GB"


def test_unknown_model_lists_close_matches():
    with pytest.raises(ConfigError, match=r"did you mean Llama-3\.1-8B") as exc:
        resolve_model("Llama-3.1-8")
    assert "unknown model 'Llama-3.1-8'" in str(exc.value)


def test_unknown_device_lists_close_matches():
    with pytest.raises(ConfigError, match="did you mean H100-80GB"):
        get_device("H100-80G")


def test_devices_in_bytes():
    assert device_names() == [
        "H100-80GB",
        "H200-141GB",
        "A100-40GB",
        "A100-80GB",
        "L40S-48GB",
        "L4-24GB",
        "A10G-24GB",
        "RTX4090-24GB",
    ]
    assert get_device("A100-80GB").memory_bytes == 81_920 * 2**20  # exactly 80 GiB
    assert get_device("H100-80GB").memory_bytes == 81_559 * 2**20


def test_config_file_and_model_dir(tmp_path):
    config = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve_model(tmp_path).config == config
    assert resolve_model(tmp_path / "config.json").config == config
    assert resolve_model(str(tmp_path)).name == tmp_path.name


def test_config_dict_passes_through():
    spec = resolve_model({"model_type": "llama", "num_hidden_layers": 1})
    assert spec.name == "llama"


def test_missing_path_and_dir_without_config(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model(str(tmp_path / "nope" / "config.json"))
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        resolve_model(tmp_path)


def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_model(path)


def test_multimodal_text_config_is_used(tmp_path):
    text = {"model_type": "llama", "num_hidden_layers": 3, "hidden_size": 64}
    (tmp_path / "config.json").write_text(json.dumps({"text_config": text}))
    assert resolve_model(tmp_path).config["num_hidden_layers"] == 3


def test_tiny_llama_reads_the_bundled_asset(tmp_path, monkeypatch):
    asset = tmp_path / "tiny-llama"
    asset.mkdir()
    monkeypatch.setattr(latlab.assets, "bundled_model_path", lambda: asset)
    with pytest.raises(ConfigError, match=r"no config\.json"):
        get_catalog_model("tiny-llama")
    config = {
        "model_type": "llama",
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
    }
    (asset / "config.json").write_text(json.dumps(config))
    spec = get_catalog_model("tiny-llama")
    assert spec.config == config
    # 4 layers x 2 KV heads x (256 / 8 = 32) x 2 x 2 B = 1,024 B
    assert kv_bytes_per_token(spec.config) == 1024


def test_real_bundled_model_when_present():
    if not (latlab.assets.bundled_model_path() / "config.json").is_file():
        pytest.skip("the bundled model's config.json is not built yet")
    config = get_catalog_model("tiny-llama").config
    expected = (
        config["num_hidden_layers"]
        * config["num_key_value_heads"]
        * (config["hidden_size"] // config["num_attention_heads"])
        * 2
        * 2
    )
    assert kv_bytes_per_token(config) == expected


def test_bundled_parameter_count_equals_its_safetensors():
    weights = latlab.assets.bundled_model_path() / "model.safetensors"
    if not weights.is_file():
        pytest.skip("the bundled model's weights are not built yet")
    with open(weights, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    stored = sum(
        math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__"
    )
    config = get_catalog_model("tiny-llama").config
    assert count_parameters(config).total == stored


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * 2**30),
        ("24GB", 24 * 10**9),
        ("24e9", 24 * 10**9),
        ("1.5 GiB", 3 * 2**29),
        ("512MiB", 2**29),
        ("80gb", 80 * 10**9),
        ("1024", 1024),
        (2**30, 2**30),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "24 GiBs", "-1GB", "GB", ""])
def test_parse_bytes_rejects(text):
    with pytest.raises(ConfigError):
        parse_bytes(text)


def test_format_bytes():
    assert format_bytes(131_072) == "128.00 KiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(2**30) == "1.00 GiB"


def test_hub_id_maps_to_the_catalog_entry():
    assert resolve_model("meta-llama/Llama-3.1-8B").name == "Llama-3.1-8B"


def test_unknown_hub_id_says_the_planner_does_not_download():
    with pytest.raises(ConfigError, match="does not download") as exc:
        resolve_model("mistralai/Mixtral-8x7B-v0.1")
    assert "Mixtral-8x7B" in str(exc.value)
