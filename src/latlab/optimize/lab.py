"""The optimization lab: baseline first, one recipe at a time, then the adopted ones together.

For every recipe the lab (1) asks whether it applies here and records the reason when not,
(2) applies it to a copy of the baseline, (3) checks quality against the baseline (logits on
held-out text for recipes that change the model, greedy outputs for all), (4) measures it
interleaved with the baseline (B C B C ...) so drift on a shared machine hits both sides
alike, and (5) adopts it only when quality holds and a figure improves by more than the spread
of the repetitions while none worsens by more. A recipe that crashes is recorded as failed with
its error and the lab moves on.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latlab.environment import environment
from latlab.errors import ConfigError
from latlab.metrics import summarize
from latlab.model_files import load_tokenizer
from latlab.optimize.lab_plan import BUILT_IN_PLAN, LabPlan
from latlab.optimize.lab_workload import LabRequest, build_requests
from latlab.optimize.passes import RunResult, make_runner
from latlab.optimize.quality import (
    LogitComparison,
    QualityResult,
    compare_logits,
    engine_heldout_logits,
    gate,
    greedy_agreement,
    heldout_logits,
)
from latlab.optimize.recipes import Recipe
from latlab.optimize.subject import Setup, activated, load_model, model_bytes
from latlab.optimize.trial import LabResult, Measurement, Trial, decide

# The lab reports its steps as one line of text each (the CLI prints them with a timestamp).
ProgressLog = Callable[[str], None]


@dataclass(slots=True)
class _Baseline:
    setup: Setup
    runner: Any
    outputs: dict[str, list[int]]
    logits: tuple[torch.Tensor, torch.Tensor] | None
    measurement: Measurement


def _figures(result: RunResult) -> dict[str, float]:
    summary = result.summary or summarize(result.records)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} request(s) failed: {summary.errors}")
    return {
        "ttft_ms_p50": summary.ttft_ms.p50 or 0.0,
        "itl_ms_p50": summary.itl_ms.p50 or 0.0,
        "e2e_ms_p50": summary.e2e_ms.p50 or 0.0,
        "output_tokens_per_s": summary.output_tokens_per_s,
    }


def _memory(setup: Setup, runner: Any) -> tuple[int, str]:
    """Weights actually held (transformers) or the KV cache the engine allocated."""
    if setup.backend == "transformers":
        return model_bytes(setup.model), "model weights and buffers held"
    stats = getattr(runner.engine, "stats", None)
    allocated = stats().kv_cache_bytes if stats is not None else 0
    if allocated:
        return allocated, "engine KV cache allocated"
    return 0, "engine KV cache (not reported)"


class Lab:
    """Runs a plan on one model; ``run()`` returns every trial, in the order tried."""

    BACKENDS: tuple[str, ...] = ("transformers", "engine")  # loops whose adopted recipes combine

    def __init__(
        self,
        plan: LabPlan,
        model_path: str,
        quality_text: str,
        progress: ProgressLog | None = None,
        runner_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.plan = plan
        self.model_path = model_path
        self.progress = progress or (lambda _: None)
        self.runner_kwargs = runner_kwargs or {}
        self.tokenizer = load_tokenizer(model_path)
        # The held-out text is one long document, cut into windows later: no length warning.
        self.tokenizer.model_max_length = max(len(quality_text), 1 << 20)
        self.text_ids = self.tokenizer.encode(quality_text, add_special_tokens=False)
        self.requests: list[LabRequest] = build_requests(self.text_ids, plan.workload)
        self.setups: dict[str, Setup] = {}
        self.baselines: dict[str, _Baseline] = {}
        self.notes: list[str] = []
        self.started = time.perf_counter()
        self.run_seconds: dict[str, float] = {}  # backend -> seconds of one baseline pass

    # ---- measurement -------------------------------------------------------------------
    def _runner(self, setup: Setup) -> Any:
        kwargs = self.runner_kwargs if setup.backend == "engine" else {}
        return make_runner(setup, self.plan.workload, **kwargs)

    def _setup(self, backend: str) -> Setup:
        """The baseline configuration of a backend (loaded once, not yet measured)."""
        if backend not in self.setups:
            model = load_model(self.model_path) if backend == "transformers" else None
            self.setups[backend] = Setup(
                backend=backend,
                model_path=self.model_path,
                tokenizer=self.tokenizer,
                model=model,
                num_threads=self.plan.threads,
                engine_options=dict(self.plan.engine) if backend == "engine" else {},
            )
        return self.setups[backend]

    def _baseline(self, backend: str) -> _Baseline:
        """The baseline, measured the first time a recipe of this backend needs it."""
        if backend in self.baselines:
            return self.baselines[backend]
        self.progress(f"baseline ({backend}): loading and warming up")
        setup = self._setup(backend)
        runner = self._runner(setup)
        first = runner.run(self.requests)
        for _ in range(self.plan.warmup - 1):
            runner.run(self.requests)
        # the engine's held-out logits are scored later, only if a recipe changes its weights
        logits = self._logits_of(setup) if setup.model is not None else None
        measurement = Measurement(extra=first.extra)
        measurement.memory_bytes, measurement.memory_what = self._memory(setup, runner)
        t0 = time.perf_counter()
        for rep in range(self.plan.repeats):
            self.progress(f"baseline ({backend}): repetition {rep + 1}/{self.plan.repeats}")
            measurement.reps.append(_figures(runner.run(self.requests)))
        self.run_seconds[backend] = (time.perf_counter() - t0) / self.plan.repeats
        base = _Baseline(setup, runner, first.outputs, logits, measurement)
        self.baselines[backend] = base
        return base

    def _memory(self, setup: Setup, runner: Any) -> tuple[int, str]:
        return _memory(setup, runner)

    def _after_measure(self, setup: Setup, runner: Any) -> None:
        """Called with the candidate's runner before it is closed (the served lab scores it)."""

    def _measure(self, trial: Trial, base: _Baseline, setup: Setup) -> RunResult:
        runner = self._runner(setup)
        try:
            first = self._measure_with(trial, base, setup, runner)
            self._after_measure(setup, runner)
            return first
        finally:
            runner.close()

    def _measure_with(self, trial: Trial, base: _Baseline, setup: Setup, runner: Any) -> RunResult:
        """Warm-up, then candidate repetitions interleaved with baseline ones (B C B C ...)."""
        started = time.perf_counter()
        first = runner.run(self.requests)
        first_s = time.perf_counter() - started
        for _ in range(self.plan.warmup - 1):
            runner.run(self.requests)
        trial.baseline = Measurement(
            memory_bytes=base.measurement.memory_bytes,
            memory_what=base.measurement.memory_what,
            extra=dict(base.measurement.extra),  # e.g. which server, its cold start
        )
        trial.candidate = Measurement(extra=first.extra)
        trial.candidate.memory_bytes, trial.candidate.memory_what = self._memory(setup, runner)
        passes = []
        for rep in range(self.plan.repeats):
            self.progress(f"{trial.name}: repetition {rep + 1}/{self.plan.repeats}")
            trial.baseline.reps.append(_figures(base.runner.run(self.requests)))
            started = time.perf_counter()
            trial.candidate.reps.append(_figures(runner.run(self.requests)))
            passes.append(time.perf_counter() - started)
        # The first pass beyond a typical one is one-off work too (torch.compile compiles
        # on its first call): it counts with the time apply() took.
        trial.setup_s += max(0.0, first_s - sorted(passes)[len(passes) // 2])
        return first

    # ---- quality and verdict -----------------------------------------------------------
    def _quality(
        self, base: _Baseline, setup: Setup, first: RunResult, exact: bool, changes_model: bool
    ) -> QualityResult:
        logits: LogitComparison | None = None
        if changes_model:
            if base.logits is None and base.setup.backend == "engine":
                base.logits = self._logits_of(base.setup)
            candidate = self._logits_of(setup)
            if base.logits is not None and candidate is not None:
                logits = compare_logits(base.logits[0], candidate[0], base.logits[1])
        ids = [r.request_id for r in self.requests]
        match, agreement = greedy_agreement(
            [base.outputs[i] for i in ids], [first.outputs[i] for i in ids]
        )
        return gate(logits, match, agreement, exact, self.plan.thresholds)

    def _logits_of(self, setup: Setup) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Held-out logits: the transformers model's, or a scoring copy of the engine's."""
        window, windows = self.plan.quality_window_tokens, self.plan.quality_windows
        with activated(setup):
            if setup.model is not None:
                return heldout_logits(setup.model, self.text_ids, window, windows)
            if setup.backend == "engine":
                options = dict(setup.engine_options)
                if setup.num_threads is not None:
                    options.setdefault("num_threads", setup.num_threads)
                return engine_heldout_logits(
                    setup.model_path, options, self.text_ids, window, windows
                )
        return None

    def _verdict(self, trial: Trial) -> None:
        decide(trial, self.plan.min_noise_pct, self.plan.objective)

    # ---- the loop ------------------------------------------------------------------------
    def _over_budget(self, backend: str, extra_s: float = 0.0) -> str | None:
        """Why the next trial would not fit the plan's time budget (None when it fits)."""
        budget = self.plan.time_budget_s
        if not budget:
            return None
        elapsed = time.perf_counter() - self.started
        passes = self.plan.warmup + 2 * self.plan.repeats
        estimate = passes * self.run_seconds.get(backend, 0.0) + extra_s
        if elapsed + estimate <= budget:
            return None
        return (
            f"time budget spent: {elapsed:.0f} s used, this trial needs about "
            f"{estimate:.0f} s more, budget {budget:.0f} s (raise time_budget_s in the plan "
            "or pass --time-budget)"
        )

    def _try(self, trial: Trial, recipes: list[Recipe]) -> Trial:
        start = time.perf_counter()
        try:
            backend = recipes[0].backend
            reason = recipes[0].why_not(self._setup(backend))
            if reason is not None:  # cheap: no baseline measured for a recipe that cannot run
                trial.verdict, trial.reason = "skip", reason
                return trial
            extra_s = sum(r.setup_cost_s for r in recipes)
            over = self._over_budget(backend, extra_s)
            if over is None:
                base = self._baseline(backend)
                over = self._over_budget(backend, extra_s)
            if over is not None:
                trial.verdict, trial.reason = "skip", over
                return trial
            setup = base.setup
            for recipe in recipes:
                reason = recipe.why_not(setup)
                if reason is not None:
                    trial.verdict, trial.reason = "skip", reason
                    return trial
                applied = time.perf_counter()
                setup = recipe.apply(setup)
                trial.setup_s += time.perf_counter() - applied
            first = self._measure(trial, base, setup)
            trial.quality = self._quality(
                base, setup, first, trial.exact, any(r.changes_model for r in recipes)
            )
            self._verdict(trial)
            recipes[0].revert(setup, base.setup)
        except Exception as exc:
            trial.verdict = "failed"
            trial.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            trial.reason = f"crashed: {trial.error}"
            self.notes.append(f"{trial.name} traceback:\n{traceback.format_exc(limit=4)}")
        finally:
            trial.elapsed_s = time.perf_counter() - start
        return trial

    def run(self, recipes: list[Recipe]) -> list[Trial]:
        trials: list[Trial] = []
        total = len(recipes)
        for index, recipe in enumerate(recipes, start=1):
            self.progress(f"[{index}/{total}] {recipe.name} ({recipe.level})")
            trial = Trial(
                name=recipe.name,
                level=recipe.level,
                backend=recipe.backend,
                changes=recipe.changes,
                exact=recipe.exact,
            )
            trials.append(self._try(trial, [recipe]))
            self.progress(f"[{index}/{total}] {recipe.name}: {trial.verdict}: {trial.reason}")
        trials.extend(self._combined(trials, recipes))
        return trials

    def _combined(self, trials: list[Trial], recipes: list[Recipe]) -> list[Trial]:
        """Adopted recipes together, per backend, one per group (the first adopted wins).

        When all of them together fail, the lab builds the set up in plan order instead:
        start from the first, add each next one, and keep it only if the set still passes.
        """
        out = []
        by_name = {r.name: r for r in recipes}
        for backend in self.BACKENDS:
            chosen: list[Recipe] = []
            groups: set[str] = set()
            for trial in trials:
                recipe = by_name[trial.name]
                if (
                    trial.verdict == "adopt"
                    and recipe.backend == backend
                    and (recipe.group not in groups)
                ):
                    chosen.append(recipe)
                    groups.add(recipe.group)
            if len(chosen) < 2:
                continue
            together = self._try_together(backend, chosen)
            out.append(together)
            if together.verdict == "adopt" or len(chosen) < 3:
                continue
            self.progress(f"combined ({backend}): building up one recipe at a time")
            kept = chosen[:1]
            for recipe in chosen[1:]:
                if [*kept, recipe] == chosen:
                    break  # that is the set that just failed
                trial = self._try_together(backend, [*kept, recipe])
                out.append(trial)
                if trial.verdict == "adopt":
                    kept.append(recipe)
        return out

    def _try_together(self, backend: str, chosen: list[Recipe]) -> Trial:
        names = [r.name for r in chosen]
        self.progress(f"combined ({backend}): {' + '.join(names)}")
        trial = Trial(
            name="combined: " + " + ".join(names),
            level="combined",
            backend=backend,
            changes="; ".join(r.changes for r in chosen),
            exact=all(r.exact for r in chosen),
            components=names,
        )
        self._try(trial, chosen)
        self.progress(f"combined ({backend}): {trial.verdict}: {trial.reason}")
        return trial

    def close(self) -> None:
        for base in self.baselines.values():
            base.runner.close()


def read_quality_text(model_path: str, quality_text: str | None) -> str:
    """The held-out text: the user's file, else the model directory's heldout.txt."""
    path = Path(quality_text) if quality_text else Path(model_path) / "heldout.txt"
    if not path.is_file():
        if quality_text:
            raise ConfigError(f"quality text file {path} does not exist")
        raise ConfigError(
            f"the model at {model_path} ships no heldout.txt; pass --quality-text FILE with "
            "held-out text the model was not trained on"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    if len(text.split()) < 20:
        raise ConfigError(f"quality text {path} is too short: give at least a few paragraphs")
    return text


def check_recipes(recipes: list[Recipe], model_path: str) -> None:
    """Each recipe's options against the model's config, before anything is loaded or timed."""
    from latlab.model_files import load_model_config

    checks = [r for r in recipes if r.check_model is not None]
    if not checks:
        return
    config = load_model_config(model_path)
    for recipe in checks:
        try:
            recipe.check_model(config)  # type: ignore[misc]
        except ConfigError as exc:
            raise ConfigError(f"recipe {recipe.name!r} on {model_path}: {exc}") from None


def run_lab(
    plan: LabPlan,
    model: str | None = None,
    quality_text: str | None = None,
    progress: ProgressLog | None = None,
    runner_kwargs: dict[str, Any] | None = None,
    make_lab: Callable[[LabPlan, str, str], Lab] | None = None,
) -> LabResult:
    """Baseline, each recipe alone, then the adopted ones together; returns every trial.

    ``make_lab(plan, model_path, quality_text)`` builds another kind of lab (the served lab
    of ``--backend vllm``); the default is the in-process one.
    """
    from datetime import datetime, timezone

    from latlab.model_files import check_model_dir, resolve_model_path

    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    start = time.perf_counter()
    model_path = resolve_model_path(model if model is not None else plan.model)
    if Path(model_path).is_dir():
        check_model_dir(model_path)  # a broken model says so, not "no heldout.txt"
    text = read_quality_text(model_path, quality_text)
    recipes = [spec.build() for spec in plan.recipes]
    if plan.source != BUILT_IN_PLAN:  # the built-in plan skips what this model cannot take
        check_recipes(recipes, model_path)
    env = environment()  # before the run: engines may change process-wide thread settings
    if plan.threads is not None:
        env["torch_threads"] = plan.threads
    if make_lab is None:
        lab = Lab(plan, model_path, text, progress, runner_kwargs)
    else:
        lab = make_lab(plan, model_path, text)
    try:
        trials = lab.run(recipes)
    finally:
        lab.close()
    return LabResult(
        model_path=model_path,
        plan=plan,
        trials=trials,
        baselines={k: b.measurement for k, b in lab.baselines.items()},
        environment=env,
        started_at=started,
        elapsed_s=time.perf_counter() - start,
        notes=lab.notes,
    )
