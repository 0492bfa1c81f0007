"""Every recipe applies to a copy and reverts to an untouched baseline."""

from __future__ import annotations

import pytest
import torch

from latlab.errors import ConfigError
from latlab.model_files import load_causal_lm, load_tokenizer
from latlab.optimize.recipes import RECIPES, make_recipe
from latlab.optimize.subject import Setup, activated, model_bytes

CUDA = torch.cuda.is_available()

TRANSFORMERS_RECIPES = [
    ("int8-weight-only", {}),
    ("int8-dynamic-activation", {}),
    ("dtype-bfloat16", {}),
    ("dtype-float16", {}),
    ("attention-eager", {}),
    ("torch-compile", {}),
    ("cpu-threads", {"threads": 2}),
    ("prompt-lookup-transformers", {}),
    ("response-cache", {}),
    ("prompt-trim", {"budget": 8}),
]
ENGINE_RECIPES = [
    ("static-batching", {}),
    ("max-num-seqs", {"value": 2}),
    ("prefill-budget", {"tokens": 32}),
    ("prefix-caching", {"enabled": False}),
    ("kv-cache-dtype", {"dtype": "bfloat16"}),
    ("group-by-prefix", {}),
    ("prompt-lookup", {"num_draft_tokens": 6}),
    ("engine-int8", {}),
    ("engine-int8-weight-only", {}),
]


@pytest.fixture(scope="module")
def base(tiny_model_dir) -> Setup:
    model = load_causal_lm(tiny_model_dir, dtype="float32")
    return Setup("transformers", str(tiny_model_dir), load_tokenizer(tiny_model_dir), model)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("name", "options"), TRANSFORMERS_RECIPES)
def test_transformers_recipe_applies_and_reverts(base: Setup, name, options):
    recipe = make_recipe(name, **options)
    before = _snapshot(base.model)
    inputs = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        logits_before = base.model(input_ids=inputs).logits
    assert recipe.applies_to(base), recipe.why_not(base)
    applied = recipe.apply(base)
    assert applied is not base and applied.changes, "the change log names what was done"
    if recipe.changes_model:
        # Weight and kernel changes work on a copy; a thread count shares the weights.
        assert (applied.model is not base.model) == (name != "cpu-threads")
        if name != "torch-compile":  # compiling runs lazily: no need to pay for it here
            with torch.inference_mode(), activated(applied):
                assert applied.model(input_ids=inputs).logits.shape == logits_before.shape
    assert recipe.revert(applied, base) is base
    after = base.model.state_dict()
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        assert torch.equal(tensor, after[key]), f"{name} changed baseline weight {key}"
    assert base.model.dtype == torch.float32
    assert base.model.config._attn_implementation == "sdpa"
    with torch.inference_mode():
        assert torch.equal(base.model(input_ids=inputs).logits, logits_before)
    assert base.decode == "greedy" and not base.response_cache and base.changes == []


@pytest.mark.parametrize(("name", "options"), ENGINE_RECIPES)
def test_engine_recipe_applies_and_reverts(tiny_model_dir, name, options):
    base = Setup("engine", str(tiny_model_dir), None, engine_options={"max_num_seqs": 8})
    recipe = make_recipe(name, **options)
    assert recipe.applies_to(base), recipe.why_not(base)
    applied = recipe.apply(base)
    assert applied != base
    assert recipe.revert(applied, base) is base
    assert base.engine_options == {"max_num_seqs": 8}
    assert not base.static_batching and not base.group_by_prefix


def test_recipes_refuse_the_wrong_backend(base: Setup, tiny_model_dir):
    engine_setup = Setup("engine", str(tiny_model_dir), None)
    assert "needs the transformers backend" in make_recipe("int8-weight-only").why_not(engine_setup)
    assert "needs the engine backend" in make_recipe("static-batching").why_not(base)
    with pytest.raises(ConfigError, match="does not apply"):
        make_recipe("static-batching").apply(base)


@pytest.mark.skipif(CUDA, reason="checks the reasons given on a machine without CUDA")
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("int4-weight-only", "need CUDA"),
        ("bnb-int8", "needs CUDA"),
        ("bnb-nf4", "needs CUDA"),
        ("attention-flash", "needs CUDA"),
        ("tf32", "no CUDA"),
    ],
)
def test_cuda_recipes_skip_with_a_reason(base: Setup, name, words):
    reason = make_recipe(name).why_not(base)
    assert reason is not None and words in reason


def test_prequantized_needs_a_checkpoint(base: Setup):
    assert "pre-quantized checkpoint" in make_recipe("gptq").why_not(base)
    assert "pre-quantized checkpoint" in make_recipe("awq").why_not(base)


def test_no_op_recipes_say_so(base: Setup):
    assert "already runs in float32" in make_recipe("dtype-float32").why_not(base)
    assert "already uses sdpa" in make_recipe("attention-sdpa").why_not(base)
    threads = torch.get_num_threads()
    assert "already uses" in make_recipe("cpu-threads", threads=threads).why_not(base)


def test_model_bytes_measures_what_is_held(base: Setup):
    fp32 = model_bytes(base.model)
    params = sum(p.numel() * 4 for p in base.model.parameters())
    assert fp32 >= params  # plus buffers (rotary inverse frequencies)
    bf16 = model_bytes(make_recipe("dtype-bfloat16").apply(base).model)
    assert bf16 == pytest.approx(fp32 / 2, rel=0.01)
    int8 = model_bytes(make_recipe("int8-weight-only").apply(base).model)
    linear = sum(m.weight.numel() for m in base.model.modules() if isinstance(m, torch.nn.Linear))
    # int8 Linear weights save 3 bytes per weight, minus their per-channel scales.
    assert fp32 - int8 == pytest.approx(3 * linear, rel=0.05)


def test_threads_are_restored_after_activation(base: Setup):
    before = torch.get_num_threads()
    setup = make_recipe("cpu-threads", threads=before + 1).apply(base)
    with activated(setup):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        make_recipe("int8-weigth-only")
    message = str(info.value)
    assert "did you mean int8-weight-only" in message
    for name in RECIPES:
        assert name in message


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(ConfigError, match="accepts: threads"):
        make_recipe("cpu-threads", thread=2)
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        make_recipe("cpu-threads", threads=0)


def test_kv_dtype_equal_to_the_model_dtype_is_a_no_op(tiny_model_dir):
    base = Setup("engine", str(tiny_model_dir), None)  # the tiny model is float32
    assert "already float32" in make_recipe("kv-cache-dtype", dtype="float32").why_not(base)
    assert make_recipe("kv-cache-dtype", dtype="bfloat16").why_not(base) is None
