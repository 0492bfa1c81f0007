"""Latency recipes: one small object per optimization, at four levels.

Each recipe says what it changes, whether it applies here (and if not, why not: no CUDA, a
missing package, already the baseline), and how to apply it. ``apply`` returns a new ``Setup``
and leaves the one it was given untouched (recipes that change weights work on a copy of the
model), so ``revert`` is releasing the copy and going back to the base.

Levels: *model* (what the weights are), *system* (how the runtime executes them), *engine*
(how the latlab engine schedules requests), *request* (what reaches the model at all).
Recipes flagged ``exact`` must not change a single greedy token; the lab checks that.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from latlab import dtypes
from latlab.errors import ConfigError
from latlab.model_files import TRUST_REMOTE_CODE, quiet_third_party
from latlab.optimize.subject import Setup

LEVELS = ("model", "system", "engine", "request")


@dataclass(kw_only=True, slots=True, frozen=True)
class Recipe:
    """One optimization: what it changes, where it applies, how to apply it."""

    name: str
    level: str
    changes: str
    backend: str  # "transformers" or "engine": which loop serves the requests
    exact: bool  # greedy output must stay identical
    changes_model: bool  # the weights or kernels change: compare logits on held-out text
    group: str  # the combined run keeps at most one recipe per group
    check: Callable[[Setup], str | None]  # why it cannot run on a setup (None: it can)
    build: Callable[[Setup], Setup]  # the setup with the recipe applied
    setup_cost_s: float = 0.0  # one-off cost (compilation) the lab's time budget allows for
    # Checks the recipe's options against the model's config.json before anything runs
    # (a prune count that leaves no layer is a mistake to report, not a recipe to skip).
    check_model: Callable[[dict[str, Any]], None] | None = None

    def why_not(self, setup: Setup) -> str | None:
        """None when the recipe can run on ``setup``; else the reason it cannot, in words."""
        if setup.backend != self.backend:
            return f"needs the {self.backend} backend, the setup uses {setup.backend}"
        return self.check(setup)

    def applies_to(self, setup: Setup) -> bool:
        return self.why_not(setup) is None

    def apply(self, setup: Setup) -> Setup:
        """A new setup with this recipe applied; ``setup`` itself is not modified."""
        reason = self.why_not(setup)
        if reason is not None:
            raise ConfigError(f"recipe {self.name!r} does not apply here: {reason}")
        return self.build(setup)

    def revert(self, applied: Setup, base: Setup) -> Setup:
        """Release what ``apply`` built (a model copy) and return the untouched base."""
        if applied.model is not None and applied.model is not base.model:
            applied.model = None
        return base


def _always(_: Setup) -> str | None:
    return None


def _no_cuda() -> str | None:
    return None if torch.cuda.is_available() else "needs CUDA; this machine has no CUDA device"


def _missing(module: str, install: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"the {module} package is not installed (pip install {install})"
    return None


def _with_model(setup: Setup, change: str, transform: Callable[[Any], Any]) -> Setup:
    model = transform(copy.deepcopy(setup.model))
    return setup.derive(change, model=model)


# ---- model level ------------------------------------------------------------------------


def _torchao(name: str, config: str, summary: str, **kwargs: Any) -> Recipe:
    def apply(setup: Setup) -> Setup:
        quiet_third_party()  # before torchao's import-time warnings
        import torchao.quantization as ao

        def quantize(model: Any) -> Any:
            ao.quantize_(model, getattr(ao, config)(**kwargs))
            return model

        return _with_model(setup, name, quantize)

    def why_not(setup: Setup) -> str | None:
        reason = _missing("torchao", "'latlab[optimize]'")
        if reason is None and setup.model.dtype not in (torch.float32, torch.bfloat16):
            reason = (
                f"torchao {config} expects float32 or bfloat16 weights, not {setup.model.dtype}"
            )
        return reason

    return Recipe(
        name=name,
        level="model",
        changes=summary,
        backend="transformers",
        exact=False,
        changes_model=True,
        group="quantization",
        check=why_not,
        build=apply,
    )


def int8_weight_only() -> Recipe:
    return _torchao(
        "int8-weight-only",
        "Int8WeightOnlyConfig",
        "Linear weights stored as int8 with per-channel scales (torchao)",
    )


def int8_dynamic_activation() -> Recipe:
    return _torchao(
        "int8-dynamic-activation",
        "Int8DynamicActivationInt8WeightConfig",
        "int8 weights and activations quantized per token at run time (torchao)",
    )


def int4_weight_only(group_size: int = 32) -> Recipe:
    base = _torchao(
        "int4-weight-only",
        "Int4WeightOnlyConfig",
        f"Linear weights as int4, groups of {group_size} (torchao)",
        group_size=group_size,
    )

    def why_not(setup: Setup) -> str | None:
        if not torch.cuda.is_available() and importlib.util.find_spec("mslk") is None:
            return (
                "torchao's int4 weight-only kernels need CUDA (tinygemm) or the mslk "
                "package on CPU; neither is here (IntxWeightOnly int4 would store the "
                "values unpacked in int8: no gain over int8-weight-only)"
            )
        return base.check(setup)

    return Recipe(
        name=base.name,
        level="model",
        changes=base.changes,
        backend="transformers",
        exact=False,
        changes_model=True,
        group="quantization",
        check=why_not,
        build=base.build,
    )


def dtype(dtype: str = "bfloat16") -> Recipe:
    target = dtypes.torch_dtype(dtype)

    def why_not(setup: Setup) -> str | None:
        if setup.model.dtype == target:
            return f"the baseline already runs in {dtype}"
        return None

    def apply(setup: Setup) -> Setup:
        return _with_model(setup, f"dtype-{dtype}", lambda m: m.to(target))

    return Recipe(
        name=f"dtype-{dtype}",
        level="model",
        changes=f"weights and activations in {dtype}",
        backend="transformers",
        exact=False,
        changes_model=True,
        group="dtype",
        check=why_not,
        build=apply,
    )


def bitsandbytes(mode: str = "int8") -> Recipe:
    if mode not in ("int8", "nf4"):
        raise ConfigError(f"bitsandbytes mode must be 'int8' or 'nf4', not {mode!r}")

    def why_not(_: Setup) -> str | None:
        return _no_cuda() or _missing("bitsandbytes", "bitsandbytes")

    def apply(setup: Setup) -> Setup:  # pragma: no cover - CUDA only
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = (
            BitsAndBytesConfig(load_in_8bit=True)
            if mode == "int8"
            else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
        )
        model = AutoModelForCausalLM.from_pretrained(
            setup.model_path,
            quantization_config=quant,
            device_map="cuda",
            trust_remote_code=TRUST_REMOTE_CODE,
        ).eval()
        return setup.derive(f"bnb-{mode}", model=model)

    return Recipe(
        name=f"bnb-{mode}",
        level="model",
        changes=f"bitsandbytes {mode} weights at load time",
        backend="transformers",
        exact=False,
        changes_model=True,
        group="quantization",
        check=why_not,
        build=apply,
    )


def prequantized(method: str = "gptq", checkpoint: str = "") -> Recipe:
    if method not in ("gptq", "awq"):
        raise ConfigError(f"method must be 'gptq' or 'awq', not {method!r}")
    package = {"gptq": "gptqmodel", "awq": "awq"}[method]

    def why_not(_: Setup) -> str | None:
        if not checkpoint:
            return (
                f"{method.upper()} needs a pre-quantized checkpoint: set checkpoint = "
                "'<dir or hub id>' for this recipe in the plan"
            )
        return _no_cuda() or _missing(package, package)

    def apply(setup: Setup) -> Setup:  # pragma: no cover - CUDA only
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            checkpoint, device_map="cuda", trust_remote_code=TRUST_REMOTE_CODE
        ).eval()
        return setup.derive(f"{method}:{checkpoint}", model=model)

    return Recipe(
        name=method,
        level="model",
        changes=f"pre-quantized {method.upper()} checkpoint",
        backend="transformers",
        exact=False,
        changes_model=True,
        group="quantization",
        check=why_not,
        build=apply,
    )


# ---- model size: pruning and distillation (latlab.compress) ------------------------------


def _decoder_reason(setup: Setup) -> str | None:
    from latlab.compress.calibration import decoder_layers

    try:
        decoder_layers(setup.model)
    except ConfigError as exc:
        return str(exc)
    return None


def _size_reason(check_model: Callable[[dict[str, Any]], None]) -> Callable[[Setup], str | None]:
    """why_not for a size recipe: no decoder layer list, or options this model cannot take
    (the built-in plan skips them; a user's plan is refused up front by ``check_model``)."""

    def why_not(setup: Setup) -> str | None:
        reason = _decoder_reason(setup)
        if reason is None:
            try:
                check_model(setup.model.config.to_dict())
            except ConfigError as exc:
                return str(exc)
        return reason

    return why_not


def _corpus_paths(corpus: str | list[str] | None) -> list[str] | None:
    if corpus is None or isinstance(corpus, list):
        return corpus
    return [corpus]


def _heal_spec(steps: int, time_s: float | None) -> Any:
    from latlab.compress.distill import UNLIMITED_STEPS, DistillSpec

    if not steps and not time_s:
        return None
    return DistillSpec(layers=None, steps=steps or UNLIMITED_STEPS, time_budget_s=time_s)


def prune_layers(
    n: int | None = None,
    fraction: float | None = None,
    method: str = "angular",
    heal_steps: int = 0,
    heal_time_s: float | None = None,
    corpus: str | list[str] | None = None,
) -> Recipe:
    """Remove the n decoder layers whose removal changes the residual stream least."""
    from latlab.compress.layers import layers_to_remove
    from latlab.compress.prune import PruneSpec

    if n is None and fraction is None:
        n = 1
    spec = PruneSpec(layers=n, layer_fraction=fraction, method=method)
    heal_spec = _heal_spec(heal_steps, heal_time_s)

    def check_model(config: dict[str, Any]) -> None:
        layers_to_remove(int(config["num_hidden_layers"]), n, fraction)

    def apply(setup: Setup) -> Setup:
        from latlab.compress.api import heal
        from latlab.compress.corpus import load_corpus
        from latlab.compress.prune import prune_model

        text = load_corpus(_corpus_paths(corpus))
        pruned, report = prune_model(setup.model, setup.tokenizer, spec, text)
        if heal_spec is not None:
            heal(setup.model, pruned, setup.tokenizer, heal_spec, text)
        return setup.derive(f"removed layers {report['layers']['removed']}", model=pruned)

    healing = f", healed by {heal_steps or heal_time_s} distillation steps/s" if heal_spec else ""
    return Recipe(
        name=(f"prune-layers-{n}" if n is not None else f"prune-layers-{fraction:g}")
        + ("-healed" if heal_spec else ""),
        level="model", backend="transformers", exact=False,
        changes=f"{spec.describe()} removed (scored on calibration text){healing}",
        changes_model=True, group="size", check=_size_reason(check_model), build=apply,
        setup_cost_s=float(heal_time_s or 0.0), check_model=check_model,
    )  # fmt: skip


def prune_width(
    mlp_fraction: float | None = 0.25,
    kv_groups: int | None = None,
    heal_steps: int = 0,
    heal_time_s: float | None = None,
    corpus: str | list[str] | None = None,
) -> Recipe:
    """Remove MLP channels and/or whole KV groups by activation magnitude."""
    from latlab.compress.prune import PruneSpec

    spec = PruneSpec(mlp_fraction=mlp_fraction, kv_groups=kv_groups)
    heal_spec = _heal_spec(heal_steps, heal_time_s)

    def check_model(config: dict[str, Any]) -> None:
        from latlab.compress.width import kept_channels

        if mlp_fraction:
            kept_channels(int(config["intermediate_size"]), mlp_fraction)
        kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
        if kv_groups is not None and not 1 <= kv_groups < kv_heads:
            raise ConfigError(f"prune-width kv_groups must be 1 to {kv_heads - 1}, not {kv_groups}")

    def apply(setup: Setup) -> Setup:
        from latlab.compress.api import heal
        from latlab.compress.corpus import load_corpus
        from latlab.compress.prune import prune_model

        text = load_corpus(_corpus_paths(corpus))
        pruned, _ = prune_model(setup.model, setup.tokenizer, spec, text)
        if heal_spec is not None:
            heal(setup.model, pruned, setup.tokenizer, heal_spec, text)
        return setup.derive(f"pruned {spec.describe()}", model=pruned)

    return Recipe(
        name="prune-width", level="model", backend="transformers", exact=False,
        changes=f"{spec.describe()} removed by activation magnitude (KV groups whole)",
        changes_model=True, group="size", check=_size_reason(check_model), build=apply,
        setup_cost_s=float(heal_time_s or 0.0), check_model=check_model,
    )  # fmt: skip


def distill(
    layers: int | None = None,
    init: str = "prune",
    mlp_fraction: float | None = None,
    steps: int = 300,
    time_budget_s: float | None = None,
    batch_size: int = 8,
    seq_len: int = 128,
    corpus: str | list[str] | None = None,
) -> Recipe:
    """A smaller student trained on the model's own logits (latlab distill, in memory)."""
    from latlab.compress.distill import DistillSpec

    spec = DistillSpec(
        layers=layers, init=init, mlp_fraction=mlp_fraction, steps=steps,
        time_budget_s=time_budget_s, batch_size=batch_size, seq_len=seq_len,
    )  # fmt: skip

    def check_model(config: dict[str, Any]) -> None:
        spec.student_layers(int(config["num_hidden_layers"]))

    def apply(setup: Setup) -> Setup:
        from latlab.compress.api import build_student, heal
        from latlab.compress.corpus import load_corpus

        text = load_corpus(_corpus_paths(corpus))
        student, _ = build_student(setup.model, setup.tokenizer, spec, text)
        stats = heal(setup.model, student, setup.tokenizer, spec, text)
        return setup.derive(f"distilled student ({stats['step']} steps)", model=student)

    size = f"{layers} layers" if layers else "half the layers"
    budget = f", at most {time_budget_s:g} s" if time_budget_s else ""
    return Recipe(
        name=f"distill-{layers}" if layers else "distill", level="model",
        backend="transformers", exact=False,
        changes=f"student with {size} ({init} init), trained {steps} steps{budget} on the "
        "teacher's softened logits + next-token loss",
        changes_model=True, group="size", check=_size_reason(check_model), build=apply,
        setup_cost_s=float(time_budget_s or 0.0), check_model=check_model,
    )  # fmt: skip


def sparsity_2_4() -> Recipe:
    """2:4 semi-structured sparsity: runs only where sparse tensor-core kernels exist."""

    def why_not(_: Setup) -> str | None:
        from latlab.compress.sparsity import why_not_semi_structured

        return why_not_semi_structured()

    def apply(setup: Setup) -> Setup:  # pragma: no cover - CUDA (Ampere+) only
        from latlab.compress.sparsity import sparsify_linears

        return _with_model(setup, "2:4 sparsity", lambda m: (sparsify_linears(m), m)[1])

    return Recipe(
        name="sparsity-2-4", level="model", backend="transformers", exact=False,
        changes="2 of every 4 weights zeroed by magnitude, sparse tensor-core matmuls",
        changes_model=True, group="sparsity", check=why_not, build=apply,
    )  # fmt: skip


# ---- system level -----------------------------------------------------------------------


def attention(implementation: str = "sdpa") -> Recipe:
    choices = ("eager", "sdpa", "flash_attention_2")
    impl = "flash_attention_2" if implementation == "flash" else implementation
    if impl not in choices:
        raise ConfigError(f"implementation must be eager, sdpa or flash, not {implementation!r}")

    def why_not(setup: Setup) -> str | None:
        if impl == "flash_attention_2":
            reason = _no_cuda() or _missing("flash_attn", "flash-attn")
            if reason:
                return f"flash attention {reason}"
        if setup.model.config._attn_implementation == impl:
            return f"the baseline already uses {impl} attention"
        return None

    def apply(setup: Setup) -> Setup:
        def switch(model: Any) -> Any:
            model.set_attn_implementation(impl)
            return model

        return _with_model(setup, f"attention-{implementation}", switch)

    name = "attention-flash" if impl == "flash_attention_2" else f"attention-{impl}"
    return Recipe(
        name=name,
        level="system",
        changes=f"attention kernel: {impl}",
        backend="transformers",
        exact=False,
        changes_model=True,
        group="attention",
        check=why_not,
        build=apply,
    )


def torch_compile(mode: str = "default") -> Recipe:
    def why_not(_: Setup) -> str | None:
        import shutil

        if torch.cuda.is_available() or shutil.which("cc") or shutil.which("gcc"):
            return None
        return "torch.compile's CPU backend needs a C compiler (cc/gcc); none found"

    def apply(setup: Setup) -> Setup:
        def compile_model(model: Any) -> Any:
            model.compile(dynamic=True, mode=None if mode == "default" else mode)
            return model

        return _with_model(setup, f"torch.compile({mode})", compile_model)

    return Recipe(
        name="torch-compile",
        level="system",
        changes=f"torch.compile (inductor, mode {mode}, dynamic)",
        backend="transformers",
        exact=False,
        changes_model=True,
        group="compile",
        check=why_not,
        build=apply,
        setup_cost_s=150.0,
    )


def tf32() -> Recipe:
    def why_not(_: Setup) -> str | None:
        if not torch.cuda.is_available():
            return "TF32 is a CUDA (Ampere or newer) matmul mode; this machine has no CUDA"
        return None

    return Recipe(
        name="tf32",
        level="system",
        changes="float32 matmuls in TF32 on CUDA",
        backend="transformers",
        exact=False,
        changes_model=True,
        group="tf32",
        check=why_not,
        build=lambda s: s.derive("tf32", tf32=True),
    )


def cpu_threads(threads: int = 1) -> Recipe:
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, not {threads}")

    def why_not(setup: Setup) -> str | None:
        current = setup.num_threads or torch.get_num_threads()
        if current == threads:
            return f"the baseline already uses {threads} thread(s)"
        return None

    return Recipe(
        name=f"threads-{threads}",
        level="system",
        changes=f"torch intra-op threads = {threads}",
        backend="transformers",
        exact=False,
        changes_model=True,
        group="threads",
        check=why_not,
        build=lambda s: s.derive(f"threads={threads}", num_threads=threads),
    )


# ---- engine level -----------------------------------------------------------------------


def _engine_reason(**options: Any) -> str | None:
    """Why the latlab engine cannot take these EngineConfig options (None when it can)."""
    try:
        from latlab.engine.config import EngineConfig
    except ImportError as exc:
        return f"the latlab engine is not importable here ({exc})"
    try:
        EngineConfig.from_options(**options)
    except ConfigError as exc:
        return f"the latlab engine refuses it: {exc}"
    return None


def _engine_recipe(name: str, changes: str, group: str, exact: bool, **options: Any) -> Recipe:
    def apply(setup: Setup) -> Setup:
        return setup.derive(name, engine_options={**setup.engine_options, **options})

    def why_not(setup: Setup) -> str | None:
        if all(setup.engine_options.get(k, _MISSING) == v for k, v in options.items()):
            return f"the baseline already has {options}"
        return _engine_reason(**options)

    return Recipe(
        name=name,
        level="engine",
        changes=changes,
        backend="engine",
        exact=exact,
        changes_model=False,
        group=group,
        check=why_not,
        build=apply,
    )


_MISSING = object()


def static_batching() -> Recipe:
    def apply(setup: Setup) -> Setup:
        return setup.derive("static batching", static_batching=True)

    return Recipe(
        name="static-batching",
        level="engine",
        changes="requests sent in fixed waves of the workload's concurrency; a wave waits for its "
        "slowest request (vs continuous batching)",
        backend="engine",
        exact=True,
        changes_model=False,
        group="batching",
        check=lambda _: _engine_reason(),
        build=apply,
    )


def max_num_seqs(value: int = 4) -> Recipe:
    return _engine_recipe(
        f"max-num-seqs-{value}",
        f"at most {value} sequences per step",
        "max_num_seqs",
        True,
        max_num_seqs=value,
    )


def chunked_prefill(tokens: int = 64) -> Recipe:
    return _engine_recipe(
        f"prefill-budget-{tokens}",
        f"chunked-prefill budget: {tokens} tokens per step",
        "prefill",
        True,
        max_num_batched_tokens=tokens,
    )


def prefix_caching(enabled: bool = False) -> Recipe:
    state = "on" if enabled else "off"
    return _engine_recipe(
        f"prefix-caching-{state}",
        f"prefix caching {state}",
        "prefix",
        True,
        enable_prefix_caching=enabled,
    )


def kv_cache_dtype(dtype: str = "bfloat16") -> Recipe:
    base = _engine_recipe(
        f"kv-cache-{dtype}", f"KV cache stored as {dtype}", "kv_dtype", False, kv_cache_dtype=dtype
    )

    def why_not(setup: Setup) -> str | None:
        auto = setup.engine_options.get("kv_cache_dtype", "auto") == "auto"
        if auto and _baseline_kv_dtype(setup) == dtype:
            return f"the baseline's KV cache is already {dtype} (auto = the model's dtype)"
        return base.check(setup)

    return dataclasses.replace(base, check=why_not)


def engine_quantization(mode: str = "int8") -> Recipe:
    """int8 linear weights inside the latlab engine, gated on held-out logits like torchao's."""
    base = _engine_recipe(
        f"engine-{mode}",
        "int8 linear weights in the latlab engine (one scale per output channel"
        + ("; activations quantized per token, int8 GEMMs)" if mode == "int8" else ")"),
        "quantization",
        False,
        quantization=mode,
    )
    return dataclasses.replace(base, changes_model=True)


def _baseline_kv_dtype(setup: Setup) -> str | None:
    """The KV dtype the setup's engine options give (None when they are not valid)."""
    from latlab.engine.config import EngineConfig
    from latlab.model_files import load_model_config

    try:
        config = EngineConfig.from_options(**setup.engine_options)
    except ConfigError:
        return None  # base.check reports the reason
    return config.kv_dtype(dtypes.checkpoint_dtype(load_model_config(setup.model_path)))


def prompt_lookup(num_draft_tokens: int = 4, max_ngram: int = 3) -> Recipe:
    """Speculative decoding inside the latlab engine (the lab's requests are greedy: exact)."""
    return _engine_recipe(
        "prompt-lookup",
        f"speculative decoding in the latlab engine: up to {num_draft_tokens} draft tokens "
        f"from the sequence's own {max_ngram}..1-gram matches, verified in one forward pass",
        "speculation",
        True,
        num_speculative_tokens=num_draft_tokens,
        prompt_lookup_max=max_ngram,
    )


def prompt_lookup_transformers(num_draft_tokens: int = 8, max_ngram: int = 3) -> Recipe:
    """The same speculation on the transformers loop (batch 1), for transformers deployments."""
    from latlab.engine.spec_decode import PromptLookupConfig

    config = PromptLookupConfig(num_draft_tokens=num_draft_tokens, max_ngram=max_ngram)

    def apply(setup: Setup) -> Setup:
        return setup.derive(f"prompt lookup {config}", decode="prompt_lookup", prompt_lookup=config)

    return Recipe(
        name="prompt-lookup-transformers",
        level="engine",
        changes="speculative decoding on the transformers loop (batch 1): up to "
        f"{num_draft_tokens} draft tokens from n-gram matches, verified in one forward pass",
        backend="transformers",
        exact=True,
        changes_model=False,
        group="speculation",
        check=_always,
        build=apply,
    )


# ---- request level ----------------------------------------------------------------------


def response_cache() -> Recipe:
    return Recipe(
        name="response-cache",
        level="request",
        changes="exact-match cache of deterministic (greedy) responses: a repeated request "
        "is answered from memory",
        backend="transformers",
        exact=True,
        changes_model=False,
        group="response_cache",
        check=_always,
        build=lambda s: s.derive("response cache", response_cache=True),
    )


def prompt_trim(budget: int = 48) -> Recipe:
    if budget < 1:
        raise ConfigError(f"budget must be >= 1 token, not {budget}")
    return Recipe(
        name=f"prompt-trim-{budget}",
        level="request",
        changes=f"prompts cut to their last {budget} tokens (counted with the model's tokenizer)",
        backend="transformers",
        exact=False,
        changes_model=False,
        group="trim",
        check=_always,
        build=lambda s: s.derive(f"prompt budget {budget}", prompt_token_budget=budget),
    )


def group_by_prefix() -> Recipe:
    def why_not(setup: Setup) -> str | None:
        if setup.engine_options.get("enable_prefix_caching") is False:
            return "prefix caching is off in this setup, so grouping cannot help"
        return _engine_reason()

    return Recipe(
        name="group-by-prefix",
        level="request",
        changes="requests sharing a prompt prefix sent together so prefix caching hits",
        backend="engine",
        exact=True,
        changes_model=False,
        group="grouping",
        check=why_not,
        build=lambda s: s.derive("group by prefix", group_by_prefix=True),
    )


# name -> factory; plan files pass keyword options to the factory.
RECIPES: dict[str, Callable[..., Recipe]] = {
    "int8-weight-only": int8_weight_only,
    "int4-weight-only": int4_weight_only,
    "int8-dynamic-activation": int8_dynamic_activation,
    "dtype-float32": lambda: dtype("float32"),
    "dtype-bfloat16": lambda: dtype("bfloat16"),
    "dtype-float16": lambda: dtype("float16"),
    "bnb-int8": lambda: bitsandbytes("int8"),
    "bnb-nf4": lambda: bitsandbytes("nf4"),
    "gptq": lambda checkpoint="": prequantized("gptq", checkpoint),
    "awq": lambda checkpoint="": prequantized("awq", checkpoint),
    "prune-layers": prune_layers,
    "prune-width": prune_width,
    "distill": distill,
    "sparsity-2-4": sparsity_2_4,
    "attention-eager": lambda: attention("eager"),
    "attention-sdpa": lambda: attention("sdpa"),
    "attention-flash": lambda: attention("flash"),
    "torch-compile": torch_compile,
    "tf32": tf32,
    "cpu-threads": cpu_threads,
    "static-batching": static_batching,
    "max-num-seqs": max_num_seqs,
    "prefill-budget": chunked_prefill,
    "prefix-caching": prefix_caching,
    "kv-cache-dtype": kv_cache_dtype,
    "engine-int8": lambda: engine_quantization("int8"),
    "engine-int8-weight-only": lambda: engine_quantization("int8-weight-only"),
    "prompt-lookup": prompt_lookup,
    "prompt-lookup-transformers": prompt_lookup_transformers,
    "response-cache": response_cache,
    "prompt-trim": prompt_trim,
    "group-by-prefix": group_by_prefix,
}


def recipe_options(
    name: str, registry: dict[str, Callable[..., Recipe]] | None = None
) -> list[str]:
    """Keyword options a recipe accepts in a plan file."""
    return list(inspect.signature((registry or RECIPES)[name]).parameters)


def make_recipe(
    name: str, registry: dict[str, Callable[..., Recipe]] | None = None, **options: Any
) -> Recipe:
    """Build a recipe by name (from ``registry``, default: latlab's own recipes); ConfigError
    naming the known recipes or the accepted options."""
    import difflib

    known = registry or RECIPES
    factory = known.get(name)
    if factory is None:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"unknown recipe {name!r}{hint}; known recipes: {', '.join(sorted(known))}"
        )
    accepted = recipe_options(name, known)
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ConfigError(
            f"recipe {name!r} has no option {unknown[0]!r}; it accepts: "
            f"{', '.join(accepted) or 'no options'}"
        )
    return factory(**options)
