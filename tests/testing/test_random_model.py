"""Random-weight models build from a shape, save like a checkpoint and load back."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from latlab.errors import ConfigError
from latlab.testing.random_model import (
    REFERENCE_106M,
    TINY_TEST,
    LlamaShape,
    build_config,
    bundled_tokenizer_info,
    save_random_llama,
)


def test_tiny_gqa_model_loads_back_with_auto_classes(tmp_path):
    out = save_random_llama(tmp_path / "m", TINY_TEST, seed=0)
    assert out == tmp_path / "m"
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = model.config
    assert config.model_type == "llama"
    assert config.num_key_value_heads == 2 < config.num_attention_heads == 4
    assert config.hidden_size == 64 and config.num_hidden_layers == 2
    assert config.vocab_size == len(tokenizer) == bundled_tokenizer_info()["vocab_size"]
    # GQA shows in the weights: k_proj maps 64 -> 2 heads x 16 dims.
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (32, 64)
    ids = tokenizer("Return the number of", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], config.vocab_size)
    assert torch.isfinite(logits).all()


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(save_random_llama(tmp_path / "a", seed=1))
    b = AutoModelForCausalLM.from_pretrained(save_random_llama(tmp_path / "b", seed=1))
    c = AutoModelForCausalLM.from_pretrained(save_random_llama(tmp_path / "c", seed=2))
    wa = a.model.layers[0].mlp.up_proj.weight
    assert torch.equal(wa, b.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(wa, c.model.layers[0].mlp.up_proj.weight)


def test_qwen2_variant_has_attention_bias(tmp_path):
    shape = LlamaShape(64, 2, 4, 2, 128, model_type="qwen2")
    model = AutoModelForCausalLM.from_pretrained(save_random_llama(tmp_path, shape))
    attn = model.model.layers[0].self_attn
    assert model.config.model_type == "qwen2"
    assert attn.q_proj.bias is not None and attn.k_proj.bias.shape == (32,)


def test_mistral_bfloat16_tied_and_custom_vocab(tmp_path):
    shape = LlamaShape(
        64, 1, 4, 1, 96, vocab_size=5000, tie_word_embeddings=True, model_type="mistral"
    )
    out = save_random_llama(tmp_path, shape, dtype="bfloat16")
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "mistral" and saved["vocab_size"] == 5000
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_presets_match_the_contract():
    assert (TINY_TEST.hidden_size, TINY_TEST.num_hidden_layers) == (64, 2)
    assert (TINY_TEST.num_attention_heads, TINY_TEST.num_key_value_heads) == (4, 2)
    ref = REFERENCE_106M
    assert (ref.hidden_size, ref.num_hidden_layers, ref.intermediate_size) == (768, 12, 3072)
    assert (ref.num_attention_heads, ref.num_key_value_heads, ref.head_dim) == (12, 6, 64)
    # Hand count: each layer has q,o 768x768, k,v 768x384 (6 KV heads x 64), a SwiGLU MLP of
    # 3 x 768x3072 and two RMSNorms; "106M" is the layers, the 4096-token vocabulary adds
    # untied embeddings + lm_head (2 x 4096 x 768) and the final norm.
    per_layer = 2 * 768 * 768 + 2 * 768 * 384 + 3 * 768 * 3072 + 2 * 768
    assert 12 * per_layer == 106_186_752
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = AutoModelForCausalLM.from_config(build_config(REFERENCE_106M))
    counted = sum(p.numel() for p in model.parameters())
    assert counted == 12 * per_layer + 2 * 4096 * 768 + 768


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_attention_heads": 3}, "divisible by num_attention_heads"),
        ({"num_key_value_heads": 3}, "divisible by num_key_value_heads"),
        ({"model_type": "gpt2"}, "model_type must be one of"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be >= 1"),
    ],
)
def test_bad_shapes_raise_config_error(kwargs, message):
    base = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    }
    with pytest.raises(ConfigError, match=message):
        LlamaShape(**{**base, **kwargs})


def test_vocab_smaller_than_tokenizer_is_refused(tmp_path):
    shape = LlamaShape(64, 1, 4, 2, 128, vocab_size=100)
    with pytest.raises(ConfigError, match="smaller than the bundled tokenizer"):
        save_random_llama(tmp_path, shape)
