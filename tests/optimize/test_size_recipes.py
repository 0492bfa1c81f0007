"""Pruning and distillation as lab recipes on a tiny random model: measured like any recipe,
the seed's claim beside the figure, the one-off cost recorded, bad counts refused up front."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from latlab.errors import ConfigError
from latlab.optimize.lab import Lab, read_quality_text, run_lab
from latlab.optimize.lab_plan import plan_from_dict
from latlab.optimize.recipes import make_recipe
from latlab.optimize.report import write_report

SMALL = {
    "threads": 1,
    "repeats": 3,
    "warmup": 1,
    "workload": {"num_requests": 2, "prompt_len": 16, "shared_prefix_len": 8, "output_len": 4},
    "quality": {"windows": 2, "window_tokens": 32},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Calibration/training text apart from the held-out text the gate scores."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(inspect.getdoc(inspect) * 3, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def trials(tiny_model_dir: Path, heldout_file: Path, corpus: str):
    plan = plan_from_dict({**SMALL, "recipes": ["tf32"], "price_per_hour": 3.6})
    lab = Lab(plan, str(tiny_model_dir), read_quality_text(str(tiny_model_dir), str(heldout_file)))
    recipes = [
        make_recipe("prune-layers", n=1, corpus=corpus),
        make_recipe("prune-width", mlp_fraction=0.5, kv_groups=1, corpus=corpus),
        make_recipe("distill", layers=1, steps=3, batch_size=2, seq_len=16, corpus=corpus),
        make_recipe("sparsity-2-4"),
    ]
    try:
        yield plan, lab.run(recipes), lab
    finally:
        lab.close()


def test_pruned_and_distilled_models_are_measured_and_gated(trials) -> None:
    _, (layers, width, student, sparse), _ = trials
    for trial in (layers, width, student):
        assert trial.verdict in ("adopt", "reject"), trial.reason
        assert trial.quality is not None and trial.quality.logits is not None
        assert trial.setup_s > 0 and len(trial.candidate.reps) == 3
    # removing half of the layers (or most of the width) of a random model costs quality
    assert layers.quality.logits.top1_agreement < 1.0
    assert width.candidate.memory_bytes < width.baseline.memory_bytes
    if not torch.cuda.is_available():
        assert sparse.verdict == "skip" and "2:4 sparse kernels" in sparse.reason


def test_report_sets_the_seed_claim_and_cost_beside_each(trials, tmp_path: Path) -> None:
    from latlab.optimize.trial import LabResult

    plan, recipe_trials, lab = trials
    baselines = {k: b.measurement for k, b in lab.baselines.items()}
    result = LabResult(model_path=lab.model_path, plan=plan, trials=recipe_trials,
                       baselines=baselines, environment={}, started_at="now",
                       elapsed_s=1.0)  # fmt: skip
    paths = write_report(result, tmp_path)
    table = Path(paths["table"]).read_text()
    assert "seed's claim" in table and "$/M tokens" in table
    assert "TTFT -20-40%, quality low ->" in table  # pruning's row
    assert "TTFT -50-70%, quality medium ->" in table  # distillation's row
    data = json.loads(Path(paths["json"]).read_text())
    layers = data["trials"][0]
    assert layers["seed_claim"]["row"] == "pruning" and layers["seed_claim"]["verdict"]
    cost = layers["cost"]
    assert cost["usd_per_million"] > 0 and cost["one_off_s"] > 0
    assert data["price"]["usd_per_hour"] == 3.6 and data["quality_limits"]
    record = Path(paths["decision_record"]).read_text()
    assert "Cost: $3.6/h" in record and "Decision rule: adopt when a figure improves" in record


def test_counts_the_model_cannot_take_are_refused_before_anything_runs(
    tiny_model_dir: Path, heldout_file: Path
) -> None:
    plans = [
        ({"name": "prune-layers", "n": 2}, "cannot remove 2 of the model's 2 layers"),
        ({"name": "distill", "layers": 3}, "larger than its teacher"),
        ({"name": "prune-width", "kv_groups": 2}, "kv_groups must be 1 to 1"),
    ]
    for recipe, message in plans:
        plan = plan_from_dict({**SMALL, "recipes": [recipe]})
        with pytest.raises(ConfigError, match=message):
            run_lab(plan, str(tiny_model_dir), str(heldout_file))


def test_objective_adopts_on_its_figure_alone() -> None:
    from latlab.optimize.noise import compare
    from latlab.optimize.trial import Measurement, Trial, objective_verdict

    trial = Trial(name="x", level="model", backend="transformers", changes="x", exact=False)
    trial.baseline = Measurement(reps=[{"output_tokens_per_s": v} for v in (100, 101, 99)])
    trial.candidate = Measurement(reps=[{"output_tokens_per_s": v} for v in (150, 151, 149)])
    trial.deltas["throughput"] = compare(
        "throughput", trial.baseline.values("output_tokens_per_s"),
        trial.candidate.values("output_tokens_per_s"), False, 2.0,
    )  # fmt: skip
    worse = compare("itl", [10.0] * 3, [20.0] * 3, True, 2.0)
    objective_verdict("cost", trial, [worse])
    assert trial.verdict == "adopt" and "objective cost: throughput +50.0%" in trial.reason
    assert "worse (accepted for the objective): itl +100.0%" in trial.reason
    trial.deltas["ttft"] = compare("ttft", [10.0] * 3, [10.0] * 3, True, 2.0)
    objective_verdict("ttft", trial, [])
    assert trial.verdict == "reject" and "objective ttft not improved" in trial.reason


def test_cli_one_line_errors_for_budget_objective_and_price(tmp_path: Path, capsys) -> None:
    from latlab.cli import run

    for args, message in [
        (["--quality-budget", "ppl:lots"], "--quality-budget term 'ppl:lots'"),
        (["--price-device", "H300"], "unknown device 'H300'"),
        (["--price-per-hour", "-2"], "--price-per-hour must be a positive number"),
    ]:
        with pytest.raises(SystemExit) as info:
            run(["optimize", "--out", str(tmp_path / "x"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_the_built_in_plan_skips_what_the_model_cannot_take(tiny_model_dir: Path) -> None:
    """A user's plan is refused up front (above); the built-in plan, run on any model, skips."""
    from latlab.model_files import load_causal_lm
    from latlab.optimize.subject import Setup

    model = load_causal_lm(tiny_model_dir, dtype="float32")  # 2 layers
    setup = Setup(backend="transformers", model_path=str(tiny_model_dir), tokenizer=None,
                  model=model)  # fmt: skip
    assert make_recipe("prune-layers", n=1).why_not(setup) is None
    reason = make_recipe("prune-layers", n=2).why_not(setup)
    assert reason is not None and "cannot remove 2 of the model's 2 layers" in reason
    assert "larger than its teacher" in make_recipe("distill", layers=3).why_not(setup)
