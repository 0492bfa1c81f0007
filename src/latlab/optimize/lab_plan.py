"""Lab plans: which recipes to try, on what workload, with which quality limits.

A plan is TOML (read with the standard library) or YAML (when PyYAML is installed)::

    repeats = 3
    [workload]
    num_requests = 8
    output_len = 32
    [quality]
    top1_min = 0.98
    recipes = ["int8-weight-only", { name = "cpu-threads", threads = 1 }]

Mistakes are reported with the line they are on: a misspelt key names its line and the closest
known key, an unknown recipe lists every known recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latlab.cost import check_objective
from latlab.errors import ConfigError
from latlab.optimize.lab_workload import LabWorkload
from latlab.optimize.quality import QualityThresholds, parse_quality_budget
from latlab.optimize.recipes import RECIPES as LOCAL_RECIPES
from latlab.optimize.recipes import Recipe, make_recipe
from latlab.optimize.vllm_recipes import VLLM_RECIPES

# Every recipe a plan may name: latlab's own and the vLLM ones (--backend vllm).
RECIPES = {**LOCAL_RECIPES, **VLLM_RECIPES}


@dataclass(slots=True)
class RecipeSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Recipe:
        return make_recipe(self.name, RECIPES, **self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


@dataclass(slots=True)
class LabPlan:
    """Everything the lab needs besides the model."""

    recipes: list[RecipeSpec]
    workload: LabWorkload = field(default_factory=LabWorkload)
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    engine: dict[str, Any] = field(default_factory=dict)  # baseline EngineConfig overrides
    # --backend vllm: the baseline server's environment settings (its flags are ``engine``).
    engine_env: dict[str, str] = field(default_factory=dict)
    repeats: int = 3
    warmup: int = 1
    min_noise_pct: float = 2.0
    threads: int | None = None  # baseline torch thread count (None: torch's default)
    time_budget_s: float | None = None  # stop starting trials past this (None: no limit)
    quality_windows: int = 8
    quality_window_tokens: int = 128
    model: str | None = None
    source: str = "built-in default plan"
    # Which figure decides adoption (None: any figure better beyond the spread, none worse);
    # "cost" is USD per million output tokens, i.e. throughput at a fixed hourly price.
    objective: str | None = None
    price_per_hour: float | None = None  # USD per device-hour, or
    price_device: str | None = None  # a catalog device's list price

    @property
    def price(self) -> Any:
        """The latlab.cost.Price the run is costed at (None: no cost figures)."""
        from latlab.cost import resolve_price

        return resolve_price(self.price_per_hour, self.price_device)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model": self.model,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "min_noise_pct": self.min_noise_pct,
            "threads": self.threads,
            "time_budget_s": self.time_budget_s,
            "objective": self.objective,
            "price_per_hour": self.price_per_hour,
            "price_device": self.price_device,
            "workload": self.workload.to_dict(),
            "quality": {
                **dataclasses.asdict(self.thresholds),
                "windows": self.quality_windows,
                "window_tokens": self.quality_window_tokens,
            },
            "engine": dict(self.engine),
            "engine_env": dict(self.engine_env),
            "recipes": [r.to_dict() for r in self.recipes],
        }


# The built-in plan: every recipe level, sized to finish in minutes on the bundled model on
# 2 CPU cores. Cheap, telling recipes come first, so a time budget cut loses the least; recipes
# that cannot run here stay in, so the report says why they were skipped.
DEFAULT_RECIPES: list[dict[str, Any]] = [
    {"name": "cpu-threads"},  # threads: every core (torch's default); set in default_plan()
    {"name": "int8-weight-only"},
    {"name": "dtype-bfloat16"},
    {"name": "response-cache"},
    {"name": "prune-layers", "n": 1},  # seconds to prune; distillation takes minutes: its own plan
    {"name": "prompt-lookup"},
    {"name": "engine-int8"},
    {"name": "static-batching"},
    {"name": "prefix-caching", "enabled": False},
    {"name": "max-num-seqs", "value": 2},
    {"name": "kv-cache-dtype", "dtype": "bfloat16"},
    {"name": "group-by-prefix"},
    {"name": "prefill-budget", "tokens": 32},
    {"name": "int8-dynamic-activation"},
    {"name": "int4-weight-only"},
    {"name": "bnb-int8"},
    {"name": "bnb-nf4"},
    {"name": "gptq"},
    {"name": "awq"},
    {"name": "attention-eager"},
    {"name": "attention-flash"},
    {"name": "tf32"},
    {"name": "dtype-float16"},
    {"name": "prompt-trim", "budget": 32},
    {"name": "torch-compile"},
]
BUILT_IN_PLAN = "built-in default plan"
DEFAULT_TIME_BUDGET_S = 420.0  # plus the last trial, the default run ends within 10 minutes

# The built-in plan for --backend vllm: vLLM's defaults as the baseline (with a 1 GiB KV cache
# on CPU, so a candidate launch fits beside it), then one launch per recipe. Recipes this
# hardware lacks (GPU ones on CPU) stay in: the report says why they were skipped.
DEFAULT_VLLM_RECIPES: list[dict[str, Any]] = [
    {"name": "vllm-cpu-threads"},
    {"name": "vllm-enforce-eager"},
    {"name": "vllm-max-num-seqs", "value": 2},
    {"name": "vllm-batched-tokens", "tokens": 256},
    {"name": "vllm-prefix-caching", "enabled": False},
    {"name": "vllm-speculative-ngram"},
    {"name": "response-cache"},
    {"name": "vllm-kv-cache-dtype", "dtype": "fp8"},
    {"name": "vllm-chunked-prefill", "enabled": False},
    {"name": "vllm-dtype", "dtype": "float32"},
    {"name": "group-by-prefix"},
    {"name": "prompt-trim", "budget": 32},
    {"name": "vllm-quantization", "method": "fp8"},
    {"name": "vllm-gpu-memory-utilization"},
    {"name": "vllm-kv-offload"},
    {"name": "vllm-tensor-parallel", "size": 2},
    {"name": "vllm-pipeline-parallel", "size": 2},
]
# Launches cost most of a vLLM trial: the default run ends within 20 minutes on 2 idle cores.
DEFAULT_VLLM_TIME_BUDGET_S = 960.0

_TOP_KEYS = {
    "model",
    "repeats",
    "warmup",
    "min_noise_pct",
    "threads",
    "time_budget_s",
    "objective",
    "price_per_hour",
    "price_device",
    "workload",
    "quality",
    "engine",
    "engine_env",
    "recipes",
}
_QUALITY_EXTRA = {"windows": "quality_windows", "window_tokens": "quality_window_tokens"}


def default_plan() -> LabPlan:
    import os

    # The baseline runs on 1 thread and the threads recipe tries every core. On a shared machine
    # a multi-threaded baseline waits at OpenMP barriers for cores other jobs hold (measured
    # here: 2 threads 10x slower than 1 under load), which would drown every other figure.
    recipes = [
        {**r, "threads": os.cpu_count() or 1} if r["name"] == "cpu-threads" else r
        for r in DEFAULT_RECIPES
    ]
    data = {"recipes": recipes, "threads": 1, "time_budget_s": DEFAULT_TIME_BUDGET_S}
    return plan_from_dict(data, text="", source=BUILT_IN_PLAN)


def default_vllm_plan() -> LabPlan:
    """The built-in plan for ``latlab optimize --backend vllm``.

    On a CPU without native bf16 the baseline runs ``--dtype float32``: vLLM's bf16 default is
    emulated there, and its warm-up alone took over 8 minutes per launch on the reference
    model here, so the plan could never finish in its budget (the vllm-dtype recipe then
    skips: the baseline already has it).
    """
    from latlab.optimize.vllm_recipes import accelerator, cpu_has_native_bf16

    data: dict[str, Any] = {
        "recipes": DEFAULT_VLLM_RECIPES,
        "time_budget_s": DEFAULT_VLLM_TIME_BUDGET_S,
        "workload": {"num_requests": 16},
    }
    source = "built-in default plan (--backend vllm)"
    if accelerator()[0] == "cpu":
        data["engine_env"] = {"VLLM_CPU_KVCACHE_SPACE": "1"}
        if not cpu_has_native_bf16():
            data["engine"] = {"dtype": "float32"}
            source = "built-in default plan (--backend vllm; --dtype float32: no native bf16)"
    return plan_from_dict(data, text="", source=source, backend="vllm")


def load_plan(path: str | Path, *, backend: str = "latlab") -> LabPlan:
    """Read a TOML or YAML plan; ConfigError with the file, the line and what to fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read plan file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"plan file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a plan must be a table of settings, not {type(data).__name__}")
    return plan_from_dict(data, text=text, source=str(path), backend=backend)


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(
                f"{path}: YAML plans need PyYAML (pip install pyyaml), or write the plan as TOML"
            ) from exc
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def _line_of(text: str, key: str, section: str | None = None) -> int | None:
    """1-based line where ``key`` is set (inside ``[section]`` when given), for messages."""
    current: str | None = None
    pattern = re.compile(rf"""^\s*(?:-\s*)?["']?{re.escape(key)}["']?\s*[=:]""")
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[+\s*([^\]]+?)\s*\]+", line)
        if header:
            current = header.group(1)
            continue
        if re.match(r"^(\w+):\s*$", line):  # YAML section
            current = line.split(":")[0]
            continue
        if pattern.match(line) and (section is None or current == section or current is None):
            return number
    return None


def _line_with(text: str, word: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if re.search(rf"""(?<![\w-]){re.escape(word)}(?![\w-])""", line):
            return number
    return None


def _where(source: str, line: int | None) -> str:
    return f"{source}, line {line}" if line else source


def _unknown_key(source: str, text: str, key: str, known: set[str], section: str | None) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    label = f"{section}.{key}" if section else key
    line = _line_of(text, key, section)
    return (
        f"{_where(source, line)}: unknown key {label!r}{hint}; known keys: "
        f"{', '.join(sorted(known))}"
    )


def _check_type(
    source: str, text: str, key: str, value: Any, default: Any, section: str | None
) -> Any:
    if default is None or value is None:
        return value
    expected = type(default)
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        label = f"{section}.{key}" if section else key
        raise ConfigError(
            f"{_where(source, _line_of(text, key, section))}: {label} must be "
            f"{expected.__name__}, got {value!r}"
        )
    return value


def _section(
    source: str, text: str, data: Any, cls: type, section: str, extra: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a table into constructor kwargs for ``cls`` and extra (plan-level) fields."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{_where(source, _line_of(text, section))}: [{section}] must be a table of settings"
        )
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    extra = extra or {}
    known = set(fields) | set(extra)
    kwargs: dict[str, Any] = {}
    plan_fields: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(_unknown_key(source, text, key, known, section))
        if key in extra:
            plan_fields[extra[key]] = _check_type(source, text, key, value, 1, section)
        else:
            kwargs[key] = _check_type(source, text, key, value, fields[key], section)
    return kwargs, plan_fields


def _recipes(source: str, text: str, items: Any) -> list[RecipeSpec]:
    if not isinstance(items, list):
        raise ConfigError(
            f"{_where(source, _line_of(text, 'recipes'))}: recipes must be a list "
            "of recipe names or {name = ..., option = ...} tables"
        )
    specs = []
    for item in items:
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            options = {k: v for k, v in item.items() if k != "name"}
            name = item["name"]
        else:
            raise ConfigError(
                f"{_where(source, _line_of(text, 'recipes'))}: each recipe is a "
                f"name or a table with a 'name', got {item!r}"
            )
        spec = RecipeSpec(name, options)
        try:
            spec.build()  # unknown names and options fail here, before anything is measured
        except ConfigError as exc:
            line = (
                _line_with(text, name)
                if name not in RECIPES
                else (_line_with(text, next(iter(options), name)) or _line_with(text, name))
            )
            raise ConfigError(f"{_where(source, line)}: {exc}") from exc
        specs.append(spec)
    if not specs:
        raise ConfigError(
            f"{source}: the plan lists no recipes; known recipes: {', '.join(sorted(RECIPES))}"
        )
    return specs


def _check_engine(source: str, text: str, engine: dict[str, Any]) -> None:
    """The [engine] table as the engine's front door reads it, refused here with its line."""
    from latlab.engine.config import EngineConfig

    line = None
    try:
        for key, value in engine.items():  # one at a time first, to name the bad key's line
            line = _line_of(text, key, "engine")
            EngineConfig.from_options(**{key: value})
        line = None
        EngineConfig.from_options(**engine)
    except ConfigError as exc:
        raise ConfigError(f"{_where(source, line)}: [engine]: {exc}") from None


def _engine_tables(
    source: str, text: str, data: dict[str, Any], backend: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The [engine] flags (latlab's checked here, vLLM's by vLLM) and [engine_env] strings."""
    engine = data.get("engine", {})
    if not isinstance(engine, dict):
        raise ConfigError(
            f"{_where(source, _line_of(text, 'engine'))}: [engine] must be a "
            "table of EngineConfig fields"
        )
    if backend != "vllm":
        _check_engine(source, text, engine)
    engine_env = data.get("engine_env", {})
    if not isinstance(engine_env, dict) or not all(isinstance(v, str) for v in engine_env.values()):
        raise ConfigError(
            f"{_where(source, _line_of(text, 'engine_env'))}: [engine_env] must be a table "
            'of environment settings with string values, e.g. VLLM_CPU_KVCACHE_SPACE = "1"'
        )
    return engine, engine_env


def plan_from_dict(
    data: dict[str, Any], text: str = "", source: str = "plan", *, backend: str = "latlab"
) -> LabPlan:
    """Validate a parsed plan; every error names the source, the line and the fix.

    ``backend`` says whose settings the [engine] table holds: latlab's EngineConfig fields are
    checked here; vLLM's flags are its own to refuse (its preflight and launch log say why).
    """
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(_unknown_key(source, text, key, _TOP_KEYS, None))
    defaults = LabPlan(recipes=[])
    top: dict[str, Any] = {}
    typed = {"threads": 1, "time_budget_s": 1.0, "objective": "", "price_per_hour": 1.0,
             "price_device": ""}  # fmt: skip
    for key in ("model", "repeats", "warmup", "min_noise_pct", *typed):
        if key in data:
            default = typed.get(key, getattr(defaults, key))
            top[key] = _check_type(source, text, key, data[key], default, None)
    workload_kwargs, _ = _section(source, text, data.get("workload", {}), LabWorkload, "workload")
    quality_kwargs, quality_extra = _section(
        source, text, data.get("quality", {}), QualityThresholds, "quality", _QUALITY_EXTRA
    )
    engine, engine_env = _engine_tables(source, text, data, backend)
    thresholds = QualityThresholds(**quality_kwargs)
    if thresholds.budget is not None:
        try:
            thresholds = parse_quality_budget(thresholds.budget)
        except ConfigError as exc:
            raise ConfigError(f"{_where(source, _line_of(text, 'budget'))}: {exc}") from None
    plan = LabPlan(
        recipes=_recipes(source, text, data.get("recipes", DEFAULT_RECIPES)),
        workload=LabWorkload(**workload_kwargs),
        thresholds=thresholds,
        engine=dict(engine),
        engine_env=dict(engine_env),
        source=source,
        **top,
        **quality_extra,
    )
    if plan.repeats < 3:
        raise ConfigError(
            f"{_where(source, _line_of(text, 'repeats'))}: repeats must be >= 3 "
            "(a change must beat the spread of at least three runs)"
        )
    try:
        check_objective(plan.objective)
        plan.price  # noqa: B018 - a bad price or unknown device fails here, not after the run
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if plan.warmup < 0:
        raise ConfigError(f"{_where(source, _line_of(text, 'warmup'))}: warmup must be >= 0")
    return plan
