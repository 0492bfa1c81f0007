"""The parameter count matches transformers' own modules, family by family.

Each case builds a small model of that family on the meta device (no memory, no weights)
and sums ``numel`` over its parameters: the planner's count from the config alone must be
exact, biases, tied embeddings, experts and MLA projections included.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from latlab.errors import ConfigError  # noqa: E402
from latlab.plan.catalog import get_catalog_model, model_names  # noqa: E402
from latlab.plan.weights import count_parameters  # noqa: E402

_BASE = {
    "hidden_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "vocab_size": 300,
    "max_position_embeddings": 256,
}
_MLA = {
    **_BASE,
    "num_key_value_heads": 4,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
    "moe_intermediate_size": 24,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
}
CASES = {
    "llama": ("llama", _BASE),
    "llama-biases": ("llama", {**_BASE, "attention_bias": True, "mlp_bias": True}),
    "llama-tied": ("llama", {**_BASE, "tie_word_embeddings": True}),
    "qwen2": ("qwen2", _BASE),
    "mistral": ("mistral", {**_BASE, "sliding_window": 32}),
    "gemma2": ("gemma2", {**_BASE, "head_dim": 32, "sliding_window": 32}),
    "mixtral": ("mixtral", {**_BASE, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "deepseek_v2": (
        "deepseek_v2",
        {**_MLA, "q_lora_rank": None, "n_shared_experts": 2, "topk_method": "greedy"},
    ),
    "deepseek_v2-q-lora": (
        "deepseek_v2",
        {**_MLA, "q_lora_rank": 24, "n_shared_experts": 2, "topk_method": "greedy"},
    ),
    "deepseek_v3": ("deepseek_v3", {**_MLA, "q_lora_rank": 24, "n_shared_experts": 1}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_count_matches_transformers(case):
    model_type, fields = CASES[case]
    fields = dict(fields)
    tie = fields.pop("tie_word_embeddings", None)
    try:
        config = transformers.AutoConfig.for_model(model_type, **fields)
    except (KeyError, ValueError) as exc:
        pytest.skip(f"this transformers has no {model_type}: {exc}")
    if tie is not None:
        config.tie_word_embeddings = tie
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    actual = sum(param.numel() for param in model.parameters())
    assert count_parameters(config.to_dict()).total == actual


@pytest.mark.parametrize("name", model_names())
def test_catalog_totals_match_transformers_at_full_size(name):
    # The real-size models on the meta device: exact for every catalog entry (8.03B, 70.55B,
    # 7.62B, 72.71B, 7.24B, 9.24B, 46.70B, 15.71B and the bundled tiny model).
    try:
        spec = get_catalog_model(name)
    except ConfigError as exc:
        pytest.skip(str(exc))
    fields = dict(spec.config)
    model_type = fields.pop("model_type")
    fields.pop("architectures", None)
    config = transformers.AutoConfig.for_model(model_type, **fields)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    actual = sum(param.numel() for param in model.parameters())
    assert count_parameters(spec.config).total == actual
