"""Model directories: path resolution, corruption detection naming the file, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latlab.assets import bundled_model_path
from latlab.errors import ConfigError, ModelLoadError
from latlab.model_files import (
    check_model_dir,
    check_safetensors,
    load_model_config,
    resolve_model_path,
    torch_dtype,
)


def test_none_resolves_to_the_bundled_model():
    assert resolve_model_path(None) == str(bundled_model_path())


def test_existing_dir_resolves_to_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("m") == str(tmp_path / "m")
    assert resolve_model_path(Path("m")) == str(tmp_path / "m")


@pytest.mark.parametrize("path", ["./nope", "/no/such/model", "~/no-such-model-dir", "a/b/c"])
def test_missing_local_path_raises_naming_it(path):
    with pytest.raises(ModelLoadError, match=f"model path '{path}' does not exist"):
        resolve_model_path(path)


def test_missing_path_under_existing_dir_is_local(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="'models/tiny' does not exist"):
        resolve_model_path("models/tiny")


def test_file_instead_of_dir_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_path(tmp_path / "config.json")


def test_hub_ids_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert resolve_model_path("gpt2") == "gpt2"


def test_dtype_names():
    torch = pytest.importorskip("torch")
    assert torch_dtype("auto") == "auto"
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ConfigError, match="dtype must be one of"):
        torch_dtype("fp8")


# --------------------------------------------------------------- corrupt directories


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from latlab.testing.random_model import save_random_llama

    return save_random_llama(tmp_path_factory.mktemp("good") / "m")


@pytest.fixture
def model_dir(good_dir, tmp_path) -> Path:
    """A fresh copy of a valid random model for each test to break."""
    import shutil

    return Path(shutil.copytree(good_dir, tmp_path / "m"))


def test_valid_random_dir_passes_and_loads(model_dir):
    from latlab.model_files import load_causal_lm, load_tokenizer

    check_model_dir(model_dir)
    model = load_causal_lm(model_dir, dtype="bfloat16")
    assert not model.training
    assert str(model.dtype) == "torch.bfloat16"
    assert load_tokenizer(model_dir).eos_token == "<|eos|>"


def test_corrupt_config_json_is_named(model_dir):
    from latlab.model_files import load_causal_lm

    (model_dir / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ModelLoadError, match=r"config\.json is not valid JSON"):
        check_model_dir(model_dir)
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model_config(model_dir)
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_causal_lm(model_dir)


def test_config_json_not_an_object_is_named(model_dir):
    (model_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match=r"config\.json does not hold a JSON object"):
        check_model_dir(model_dir)


def test_truncated_safetensors_is_named(model_dir):
    from latlab.model_files import load_causal_lm

    weights = model_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is truncated"):
        check_model_dir(model_dir)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is truncated"):
        load_causal_lm(model_dir)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01\x02", "truncated"),
        ((10**12).to_bytes(8, "little") + b"{}", "bad safetensors header length"),
        ((4).to_bytes(8, "little") + b"{not", "header is not JSON"),
    ],
)
def test_garbage_safetensors_headers(tmp_path, payload, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(payload)
    with pytest.raises(ModelLoadError, match=message):
        check_safetensors(path)


def test_missing_weights_are_named(model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no weights in .*expected model\.safetensors"):
        check_model_dir(model_dir)


def test_missing_shard_from_index_is_named(model_dir):
    (model_dir / "model.safetensors").unlink()
    index = {"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"model-00001-of-00002\.safetensors is missing"):
        check_model_dir(model_dir)


def test_broken_tokenizer_json_is_named(model_dir):
    from latlab.model_files import load_tokenizer

    text = (model_dir / "tokenizer.json").read_text()
    (model_dir / "tokenizer.json").write_text(text[:1000])
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json is not valid JSON"):
        check_model_dir(model_dir)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        load_tokenizer(model_dir)


def test_missing_model_path_in_loaders(tmp_path):
    from latlab.model_files import load_causal_lm, load_tokenizer

    missing = tmp_path / "absent"
    for load in (load_causal_lm, load_tokenizer, load_model_config, check_model_dir):
        with pytest.raises(ModelLoadError, match=f"'{missing}' does not exist"):
            load(missing)
