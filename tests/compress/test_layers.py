"""Layer scores and removal: the layer that does nothing is the one chosen, and removing it
changes no logit; config and weights of the result agree for transformers and the engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latlab.compress.calibration import calibration_windows, decoder_layers
from latlab.compress.corpus import load_corpus, token_stream
from latlab.compress.layers import (
    choose_layers,
    layers_to_remove,
    remove_layers,
    score_layers,
)
from latlab.errors import ConfigError
from latlab.model_files import load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(four_layer_dir: Path):
    return load_tokenizer(four_layer_dir)


@pytest.fixture(scope="module")
def windows(tokenizer, corpus_file: Path) -> list[torch.Tensor]:
    stream = token_stream(tokenizer, load_corpus([corpus_file]), min_tokens=65)
    return calibration_windows(stream, 64, 4)


def _model_with_identity_layer(path: Path, layer: int):
    model = load_causal_lm(path, dtype="float32")
    block = decoder_layers(model)[layer]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    return model


@pytest.mark.parametrize("method", ["angular", "block-influence"])
def test_an_identity_layer_scores_zero_and_is_chosen(four_layer_dir, windows, method) -> None:
    model = _model_with_identity_layer(four_layer_dir, 2)
    scores = score_layers(model, windows)
    assert scores.num_layers == 4 and scores.tokens == 4 * 63
    assert scores.block_distance(2, 1) == pytest.approx(0.0, abs=1e-3)
    assert scores.block_influence[2] == pytest.approx(0.0, abs=1e-5)
    assert min(scores.block_influence[i] for i in (0, 1, 3)) > 1e-3
    assert choose_layers(scores, 1, method) == [2]
    assert set(scores.angular) == {(i, j) for i in range(4) for j in range(i + 1, 5)}


def test_angular_removes_a_contiguous_block(four_layer_dir, windows) -> None:
    scores = score_layers(load_causal_lm(four_layer_dir, dtype="float32"), windows)
    chosen = choose_layers(scores, 2, "angular")
    assert chosen == [chosen[0], chosen[0] + 1]
    best = min(scores.block_distance(s, 2) for s in range(3))
    assert scores.block_distance(chosen[0], 2) == best


def test_removing_an_identity_layer_keeps_every_logit(four_layer_dir, windows) -> None:
    model = _model_with_identity_layer(four_layer_dir, 1)
    ids = windows[0].unsqueeze(0)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        remove_layers(model, [1])
        after = model(input_ids=ids).logits
    assert model.config.num_hidden_layers == 3 and len(decoder_layers(model)) == 3
    assert [layer.self_attn.layer_idx for layer in decoder_layers(model)] == [0, 1, 2]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_pruned_checkpoint_generates_alike_in_transformers_and_the_engine(
    four_layer_dir, tmp_path, tokenizer
) -> None:
    from latlab.compress.checkpoint import save_model
    from latlab.engine import LLM, SamplingParams

    model = load_causal_lm(four_layer_dir, dtype="float32")
    remove_layers(model, [0, 3])
    out = save_model(model, tmp_path / "pruned", str(four_layer_dir), {"kind": "test"})
    reloaded = load_causal_lm(out, dtype="float32")
    assert reloaded.config.num_hidden_layers == 2
    prompt = tokenizer.encode("Return the number of items", add_special_tokens=True)
    with torch.no_grad():
        expected = reloaded.generate(
            torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
    llm = LLM(str(out), dtype="float32", num_threads=1)
    got = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert got[0].token_ids == expected
    assert (out / "heldout.txt").is_file() and (out / "latlab-compress.json").is_file()


@pytest.mark.parametrize(
    ("n", "fraction", "message"),
    [
        (4, None, "at least one layer must remain"),
        (0, None, "remove 1 to 3"),
        (None, 1.0, "between 0 and 1"),
        (1, 0.5, "not both"),
        (None, None, "not both"),
    ],
)
def test_counts_that_leave_no_layer_or_remove_none_are_refused(n, fraction, message) -> None:
    with pytest.raises(ConfigError, match=message):
        layers_to_remove(4, n, fraction)


def test_fraction_rounds_to_a_count() -> None:
    assert layers_to_remove(4, fraction=0.5) == 2
    assert layers_to_remove(12, fraction=0.25) == 3
    assert layers_to_remove(4, fraction=0.01) == 1
