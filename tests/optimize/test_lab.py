"""The lab on a tiny random model: quality gate, crash handling, noise rule, written report."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner, Result

from latlab.optimize.lab import Lab, read_quality_text, run_lab
from latlab.optimize.lab_plan import plan_from_dict
from latlab.optimize.recipes import Recipe, make_recipe
from latlab.optimize.report import write_report
from latlab.optimize.trial import Measurement, Trial

SMALL = {
    "threads": 1,
    "repeats": 3,
    "warmup": 1,
    "workload": {
        "num_requests": 3,
        "prompt_len": 16,
        "shared_prefix_len": 8,
        "output_len": 4,
        "concurrency": 2,
    },
    "quality": {"windows": 2, "window_tokens": 32},
}


def _plan(recipes):
    return plan_from_dict({**SMALL, "recipes": recipes})


def _noisy_weights(scale: float) -> Recipe:
    """A deliberately damaged model: Gaussian noise on every weight."""

    def apply(setup):
        import copy

        model = copy.deepcopy(setup.model)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.abs().mean())
        return setup.derive("noise", model=model)

    return Recipe(
        name="noisy-weights",
        level="model",
        changes="weights + noise",
        backend="transformers",
        exact=False,
        changes_model=True,
        group="noise",
        check=lambda s: None,
        build=apply,
    )


def _crashing() -> Recipe:
    def apply(setup):
        raise RuntimeError("kernel exploded")

    return Recipe(
        name="crash",
        level="model",
        changes="always fails",
        backend="transformers",
        exact=False,
        changes_model=True,
        group="crash",
        check=lambda s: None,
        build=apply,
    )


@pytest.fixture(scope="module")
def lab(tiny_model_dir, heldout_file):
    text = read_quality_text(str(tiny_model_dir), str(heldout_file))
    lab = Lab(_plan(["response-cache"]), str(tiny_model_dir), text)
    yield lab
    lab.close()


def test_gate_rejects_damaged_model_and_accepts_exact_recipe(lab):
    trials = lab.run([_noisy_weights(0.5), make_recipe("response-cache")])
    noisy, cache = trials[0], trials[1]
    assert noisy.verdict == "reject" and noisy.reason.startswith("quality:")
    assert not noisy.quality.passed
    assert noisy.quality.logits.top1_agreement < 0.98
    assert noisy.quality.logits.mean_kl > 0.01
    assert cache.quality.passed and cache.quality.exact_required
    assert cache.quality.greedy_match_rate == 1.0
    assert cache.quality.reason == "greedy outputs identical"
    assert cache.verdict in ("adopt", "reject") and len(cache.candidate.reps) == 3


def test_crashing_recipe_is_recorded_and_the_lab_continues(lab):
    trials = lab.run([_crashing(), make_recipe("prompt-lookup-transformers"), make_recipe("tf32")])
    assert trials[0].verdict == "failed"
    assert trials[0].error == "RuntimeError: kernel exploded"
    assert "kernel exploded" in trials[0].reason
    assert trials[1].verdict in ("adopt", "reject")  # measured after the crash
    assert trials[1].quality.greedy_match_rate == 1.0  # prompt lookup keeps greedy output
    extra = trials[1].candidate.extra
    assert extra["forward_passes"] >= 1 and 0 <= extra["accepted_tokens"] <= extra["drafted_tokens"]
    if not torch.cuda.is_available():
        assert trials[2].verdict == "skip" and "CUDA" in trials[2].reason


def test_engine_prompt_lookup_keeps_greedy_output_and_reports_acceptance(
    tiny_model_dir, heldout_file
):
    text = read_quality_text(str(tiny_model_dir), str(heldout_file))
    # outputs long enough for this random model to fall into the loops drafts are made of
    workload = {**SMALL["workload"], "output_len": 24}
    plan = plan_from_dict({**SMALL, "workload": workload, "recipes": ["prompt-lookup"]})
    lab = Lab(plan, str(tiny_model_dir), text)
    try:
        (trial,) = lab.run([make_recipe("prompt-lookup")])
    finally:
        lab.close()
    assert trial.backend == "engine" and trial.verdict in ("adopt", "reject")
    assert trial.quality.exact_required and trial.quality.greedy_match_rate == 1.0
    extra = trial.candidate.extra
    assert 0 <= extra["spec_accepted_tokens_total"] <= extra["spec_draft_tokens_total"]
    assert extra["spec_draft_tokens_total"] > 0
    assert lab.baselines["engine"].measurement.extra["spec_draft_tokens_total"] == 0


def test_engine_int8_is_gated_on_the_engines_own_logits(tiny_model_dir, heldout_file):
    text = read_quality_text(str(tiny_model_dir), str(heldout_file))
    lab = Lab(_plan(["engine-int8-weight-only"]), str(tiny_model_dir), text)
    try:
        (trial,) = lab.run([make_recipe("engine-int8-weight-only")])
    finally:
        lab.close()
    assert trial.backend == "engine" and trial.verdict in ("adopt", "reject"), trial.reason
    logits = trial.quality.logits
    assert logits is not None, "an engine recipe that changes weights compares logits"
    assert 0.9 <= logits.top1_agreement < 1.0 and 0 < logits.mean_kl < 0.05
    assert not trial.quality.exact_required


def _trial(base, cand, memory=(100, 100)):
    trial = Trial(name="x", level="system", backend="transformers", changes="x", exact=True)
    trial.baseline = Measurement(
        reps=[dict(zip(_KEYS, v, strict=True)) for v in base], memory_bytes=memory[0]
    )
    trial.candidate = Measurement(
        reps=[dict(zip(_KEYS, v, strict=True)) for v in cand], memory_bytes=memory[1]
    )
    return trial


_KEYS = ("ttft_ms_p50", "itl_ms_p50", "output_tokens_per_s")


def test_noise_rule_does_not_adopt_a_change_inside_the_spread():
    fake = SimpleNamespace(plan=_plan(["tf32"]))
    # Candidate 5% faster on every median, but the baseline repetitions spread by 20%.
    base = [(100, 10, 100), (90, 9, 90), (110, 11, 110)]
    cand = [(95, 9.5, 105), (86, 8.6, 95), (104, 10.4, 115)]
    trial = _trial(base, cand)
    Lab._verdict(fake, trial)
    assert trial.verdict == "reject" and "no change beyond the spread" in trial.reason
    # The same repetitions shifted 40% faster do count.
    fast = [(60, 6, 160), (58, 5.8, 158), (62, 6.2, 162)]
    trial = _trial(base, fast)
    Lab._verdict(fake, trial)
    assert trial.verdict == "adopt" and "ttft -40.0%" in trial.reason


def test_a_worse_figure_rejects_despite_gains():
    fake = SimpleNamespace(plan=_plan(["tf32"]))
    base = [(100, 10, 100)] * 3
    trial = _trial(base, [(100, 20, 60)] * 3, memory=(100, 25))
    Lab._verdict(fake, trial)
    assert trial.verdict == "reject"
    assert "worse: itl +100.0%" in trial.reason and "better: memory -75.0%" in trial.reason


def _write_small_plan(tmp_path: Path) -> Path:
    """A plan small enough for a test: three recipes, three requests, two quality windows."""
    plan = tmp_path / "plan.toml"
    plan.write_text(
        'threads = 1\nrecipes = ["response-cache", "tf32", {name = "max-num-seqs", value = 1}]\n'
        "[workload]\nnum_requests = 3\nprompt_len = 16\nshared_prefix_len = 8\noutput_len = 4\n"
        "[quality]\nwindows = 2\nwindow_tokens = 32\n",
        encoding="utf-8",
    )
    return plan


def _invoke_optimize(model_dir: Path, plan: Path, heldout: Path, out: Path) -> Result:
    """``latlab optimize`` through the CLI, as a user runs it, named and tagged for the store."""
    from latlab.cli import main
    from latlab.cli import optimize as _  # noqa: F401  registers the verb

    return CliRunner().invoke(
        main,
        [
            "optimize",
            str(model_dir),
            "--plan",
            str(plan),
            "--quality-text",
            str(heldout),
            "--out",
            str(out),
            "--name",
            "lab",
            "--tag",
            "nightly",
        ],
    )


def _assert_decision_record(out: Path, output: str) -> None:
    """decision.md has every section, the command to reproduce, and the verdicts printed."""
    record = (out / "decision.md").read_text()
    for heading in (
        "## Environment",
        "## What was tried, in order",
        "## Adopted",
        "## Verdict",
        "## Strategy table",
        "## Reproduce",
    ):
        assert heading in record
    assert f"--plan {out / 'plan.toml'}" in record
    said = [x[len("verdict: ") :] for x in output.splitlines() if x.startswith("verdict: ")]
    assert said and all(f"- **{line}**" in record for line in said)  # one source of truth


def _assert_result_json_recorded(out: Path) -> None:
    """result.json holds the trials in plan order, and the run store keeps the same document."""
    data = json.loads((out / "result.json").read_text())
    assert data["kind"] == "latlab.optimize" and data["schema_version"] == 1
    assert [t["name"] for t in data["trials"]][:3] == ["response-cache", "tf32", "max-num-seqs-1"]
    assert set(data["baselines"]) == {"transformers", "engine"}
    assert len(data["trials"][0]["candidate"]["reps"]) == 3
    from latlab.runs import RunStore

    with RunStore.open() as store:  # recorded, as the same document
        run = store.find("lab")
    assert run.kind == "optimize" and run.info.tags == ["nightly"] and run.result == data


@pytest.mark.slow
def test_end_to_end_cli_writes_table_record_and_json(tiny_model_dir, heldout_file, tmp_path):
    out = tmp_path / "run"
    result = _invoke_optimize(tiny_model_dir, _write_small_plan(tmp_path), heldout_file, out)
    assert result.exit_code == 0, result.output
    assert "| recipe | level | TTFT | ITL | throughput | memory |" in result.output
    table = (out / "table.md").read_text()
    assert "response-cache" in table and "tf32" in table and "max-num-seqs-1" in table
    _assert_decision_record(out, result.output)
    _assert_result_json_recorded(out)
    # The written plan reads back.
    from latlab.optimize.lab_plan import load_plan

    assert [r.name for r in load_plan(out / "plan.toml").recipes] == [
        "response-cache",
        "tf32",
        "max-num-seqs",
    ]


def test_report_from_run_lab(tiny_model_dir, heldout_file, tmp_path):
    result = run_lab(_plan(["tf32", "gptq"]), str(tiny_model_dir), str(heldout_file))
    assert [t.verdict for t in result.trials] == ["skip", "skip"] or torch.cuda.is_available()
    paths = write_report(result, tmp_path / "out")
    assert "pre-quantized checkpoint" in Path(paths["table"]).read_text()


def test_missing_heldout_text_says_what_to_do(tiny_model_dir, tmp_path):
    from latlab.errors import ConfigError

    with pytest.raises(ConfigError, match="--quality-text"):
        read_quality_text(str(tiny_model_dir), None)
    with pytest.raises(ConfigError, match="does not exist"):
        read_quality_text(str(tiny_model_dir), str(tmp_path / "nope.txt"))


def test_time_budget_skips_the_rest(tiny_model_dir, heldout_file):
    plan = plan_from_dict({**SMALL, "time_budget_s": 0.001, "recipes": ["response-cache"]})
    result = run_lab(plan, str(tiny_model_dir), str(heldout_file))
    assert result.trials[0].verdict == "skip"
    assert "time budget spent" in result.trials[0].reason


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from latlab.cli import run

    bad = tmp_path / "plan.toml"
    bad.write_text('repeats = 3\nrecipes = ["int8-weigth-only"]\n', encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        run(["optimize", "--plan", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "line 2: unknown recipe 'int8-weigth-only'" in err and "int8-weight-only" in err
    with pytest.raises(SystemExit) as info:
        run(["optimize", str(tmp_path / "no-such-model")])
    assert info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_when_adopted_recipes_fail_together_the_lab_builds_the_set_up():
    recipes = [
        make_recipe(n)
        for n in ("response-cache", "prompt-trim", "cpu-threads", "prompt-lookup-transformers")
    ]
    names = [r.name for r in recipes]
    trials = [
        Trial(name=r.name, level=r.level, backend=r.backend, changes=r.changes, exact=r.exact)
        for r in recipes
    ]
    for t in trials:
        t.verdict, t.reason = "adopt", "faster"
    tried: list[list[str]] = []

    def fake_try(trial, chosen):  # prompt-trim and cpu-threads conflict
        tried.append([r.name for r in chosen])
        clash = {names[1], names[2]} <= set(trial.components)
        trial.verdict, trial.reason = ("reject", "quality") if clash else ("adopt", "faster")
        return trial

    fake = SimpleNamespace(progress=lambda _: None, _try=fake_try, BACKENDS=Lab.BACKENDS)
    fake._try_together = lambda backend, chosen: Lab._try_together(fake, backend, chosen)
    out = Lab._combined(fake, trials, recipes)
    assert (
        tried
        == [
            names,  # all four: rejected
            names[:2],  # response-cache + prompt-trim: kept
            names[:3],  # + cpu-threads: rejected, dropped
            [*names[:2], names[3]],  # + prompt-lookup-transformers: kept
        ]
    )
    assert [t.verdict for t in out] == ["reject", "adopt", "reject", "adopt"]
    from latlab.optimize.report import verdict_lines

    result = SimpleNamespace(adopted=trials, trials=[*trials, *out])
    assert verdict_lines(result) == [
        f"use together (transformers): {names[0]} + {names[1]} + {names[3]} (faster; quality: -)"
    ]
    for t in out:  # no combination held up: each adopted recipe alone, never "adopted: all"
        t.verdict = "reject"
    (line,) = verdict_lines(result)
    assert line.startswith("no combination held up (transformers): adopt one of these alone")
    assert all(f"{n} (faster; quality: -)" in line for n in names)
    result = SimpleNamespace(adopted=[], trials=out)
    assert verdict_lines(result) == [
        "nothing: no recipe beat the noise without hurting quality or another figure"
    ]
