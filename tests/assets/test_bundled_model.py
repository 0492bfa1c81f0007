"""The bundled tiny model loads through the standard transformers path and is really trained.

A broken or swapped asset fails here: shape facts, tied embeddings, the chat template, the
size budget, held-out perplexity against the figure the training script recorded, and a
greedy continuation that reads like text.
"""

from __future__ import annotations

import json
import string

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from latlab.assets import bundled_model_path  # noqa: E402
from latlab.compress.training import window_perplexity  # noqa: E402
from latlab.model_files import check_model_dir, load_model_config  # noqa: E402

MODEL_DIR = bundled_model_path()
MAX_BYTES_ON_DISK = 20 * 1024 * 1024
PERPLEXITY_MARGIN = 1.1


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((MODEL_DIR / "training_report.json").read_text())


@pytest.fixture(scope="module")
def model():
    loaded = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    return loaded.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(MODEL_DIR)


def test_directory_is_complete_and_valid():
    check_model_dir(MODEL_DIR)
    for name in ("generation_config.json", "heldout.txt", "training_report.json"):
        assert (MODEL_DIR / name).is_file(), name


def test_shape_facts(model, tokenizer, report):
    config = model.config
    assert config.model_type == "llama"
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    assert (config.hidden_size, config.num_hidden_layers) == (256, 4)
    assert (config.num_attention_heads, config.num_key_value_heads) == (8, 2)
    assert config.max_position_embeddings == 2048
    assert config.vocab_size == len(tokenizer) == 4096
    assert config.hidden_act == "silu"  # SwiGLU MLP
    assert load_model_config(None)["num_key_value_heads"] == 2
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (2 * 32, 256)  # 2 KV heads x head_dim 32
    assert sum(p.numel() for p in model.parameters()) == report["model"]["parameters"]


def test_embeddings_are_tied_and_fp32_fits_the_size_budget(model):
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32
    size = sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file())
    assert size < MAX_BYTES_ON_DISK, f"{size} bytes"


def test_special_tokens_and_generation_config(model, tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.bos_token_id == tokenizer.bos_token_id
    for role in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert len(tokenizer(role, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_renders(tokenizer):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What does json provide?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|bos|><|system|>\nAnswer briefly.<|eos|>"
        "<|user|>\nWhat does json provide?<|eos|><|assistant|>\n"
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids) == text  # byte-level BPE round-trips exactly


def test_heldout_perplexity_is_below_the_recorded_figure(model, tokenizer, report):
    text = (MODEL_DIR / "heldout.txt").read_text(encoding="utf-8")
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    # The script scores at most its eval_tokens; heldout.txt is a few KB, well under that.
    assert 500 < len(ids) <= 20_000, "heldout.txt should be a few KB"
    perplexity = window_perplexity(model, ids, report["training"]["seq_len"], len(ids))
    recorded = report["heldout_txt_perplexity"]
    assert perplexity < recorded * PERPLEXITY_MARGIN, (perplexity, recorded)
    # Far from a uniform guess over the vocabulary: the weights are trained.
    assert perplexity < len(tokenizer) / 8


def test_greedy_continuation_reads_like_text(model, tokenizer):
    enc = tokenizer("Return the number of", return_tensors="pt")
    with torch.no_grad():
        # Docstring answers are short and end in eos; min_new_tokens reads past it.
        out = model.generate(**enc, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    text = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    printable = sum(ch in string.printable for ch in text)
    assert text and printable / len(text) > 0.95, repr(text)
    words = {w.strip(string.punctuation).lower() for w in text.split()}
    words = {w for w in words if w.isalpha() and len(w) > 1}
    assert len(words) >= 4, repr(text)
