"""Width pruning: channels and KV groups that carry nothing are the ones cut, and cutting them
changes no logit; the saved config (intermediate_size, head counts, head_dim) matches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latlab.compress.calibration import calibration_windows, channel_magnitudes, decoder_layers
from latlab.compress.corpus import load_corpus, token_stream
from latlab.compress.width import kept_channels, prune_kv_groups, prune_mlp_channels
from latlab.errors import ConfigError
from latlab.model_files import load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def windows(four_layer_dir: Path, corpus_file: Path) -> list[torch.Tensor]:
    stream = token_stream(load_tokenizer(four_layer_dir), load_corpus([corpus_file]), 65)
    return calibration_windows(stream, 64, 3)


def test_dead_mlp_channels_go_first_and_logits_stay(four_layer_dir, windows) -> None:
    model = load_causal_lm(four_layer_dir, dtype="float32")
    dead = torch.arange(0, 128, 2)  # half the channels never fire
    with torch.no_grad():
        for layer in decoder_layers(model):
            layer.mlp.up_proj.weight[dead] = 0.0
    ids = windows[0].unsqueeze(0)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    magnitudes = channel_magnitudes(model, windows)
    assert magnitudes.tokens == 3 * 63
    assert float(magnitudes.mlp[0][dead].max()) == 0.0
    assert prune_mlp_channels(model, magnitudes, 0.5) == 64
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert model.config.intermediate_size == 64
    assert decoder_layers(model)[0].mlp.down_proj.weight.shape == (64, 64)


def test_a_silent_kv_group_goes_with_its_query_heads(four_layer_dir, windows, tmp_path) -> None:
    from latlab.compress.checkpoint import save_model

    model = load_causal_lm(four_layer_dir, dtype="float32")
    head_dim = 16
    with torch.no_grad():
        for layer in decoder_layers(model):  # group 0's values are zero: its heads output 0
            layer.self_attn.v_proj.weight[:head_dim] = 0.0
    ids = windows[1].unsqueeze(0)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert prune_kv_groups(model, channel_magnitudes(model, windows), 1) == 1
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    out = save_model(model, tmp_path / "narrow", None, {})
    reloaded = load_causal_lm(out, dtype="float32")
    config = reloaded.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)


def test_width_limits() -> None:
    assert kept_channels(704, 0.25) == 528  # rounded to a multiple of 8
    with pytest.raises(ConfigError, match="between 0 and 1"):
        kept_channels(704, 1.0)
    with pytest.raises(ConfigError, match="removes some and keeps some"):
        kept_channels(4, 0.05)


def test_the_last_kv_group_cannot_go(four_layer_dir, windows) -> None:
    model = load_causal_lm(four_layer_dir, dtype="float32")
    with pytest.raises(ConfigError, match="remove 1 to 1"):
        prune_kv_groups(model, channel_magnitudes(model, windows), 2)
