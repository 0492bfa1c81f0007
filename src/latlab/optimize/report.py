"""What the lab writes: the strategy table, the decision record (Markdown) and the full JSON.

The table is the measured version of the "technique: TTFT -30%, quality impact low" tables in
articles: every figure is a change of medians against a baseline measured interleaved in the
same run, marked with * when it beats the spread of the repetitions.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latlab.optimize.lab import FIGURES, LabResult, Measurement, Trial
from latlab.optimize.lab_plan import LabPlan

SCHEMA_VERSION = 1


def default_out_dir() -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("latlab-runs") / stamp


def _pct(trial: Trial, figure: str) -> str:
    change = trial.deltas.get(figure)
    if change is None:
        return "-"
    if change.baseline == 0 and change.candidate == 0:
        return "0%"
    return f"{change.change_pct:+.1f}%{'*' if change.significant else ''}"


def quality_cell(trial: Trial) -> str:
    q = trial.quality
    if q is None:
        return "-"
    parts = []
    if q.logits is not None:
        parts.append(
            f"top-1 {q.logits.top1_agreement:.3f}, KL {q.logits.mean_kl:.1e} "
            f"(p99 {q.logits.p99_kl:.1e}), ppl {q.logits.perplexity_change_pct:+.2f}%"
        )
    if q.greedy_match_rate is not None:
        parts.append(f"greedy {100 * q.greedy_match_rate:.0f}% same")
    return "; ".join(parts)


def strategy_table(trials: list[Trial]) -> str:
    """The Markdown strategy table, one row per trial in the order tried."""
    rows = [
        "| recipe | level | TTFT | ITL | throughput | memory | quality | verdict | reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in trials:
        reason = t.reason.replace("|", "/")
        rows.append(
            f"| {t.name} | {t.level} | {_pct(t, 'ttft')} | {_pct(t, 'itl')} | "
            f"{_pct(t, 'throughput')} | {_pct(t, 'memory')} | {quality_cell(t)} | "
            f"**{t.verdict}** | {reason} |"
        )
    return "\n".join(rows)


def _median(m: Measurement, key: str) -> float:
    values = sorted(m.values(key))
    return values[len(values) // 2] if values else 0.0


def _baseline_lines(result: LabResult) -> list[str]:
    lines = ["| backend | TTFT p50 | ITL p50 | throughput | memory |", "|---|---|---|---|---|"]
    for backend, m in result.baselines.items():
        lines.append(
            f"| {backend} | {_median(m, 'ttft_ms_p50'):.2f} ms | "
            f"{_median(m, 'itl_ms_p50'):.2f} ms | "
            f"{_median(m, 'output_tokens_per_s'):.1f} tok/s | "
            f"{m.memory_bytes / 2**20:.2f} MiB ({m.memory_what}) |"
        )
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def plan_toml(plan: LabPlan) -> str:
    """The effective plan as a TOML file that ``--plan`` reads back."""
    data = plan.to_dict()
    lines = ["# latlab optimize plan (written by the lab; edit and pass with --plan)"]
    for key in ("repeats", "warmup", "min_noise_pct", "threads", "time_budget_s"):
        if data[key] is not None:
            lines.append(f"{key} = {_toml_value(data[key])}")
    lines.append("recipes = [")
    lines += [f"  {_toml_value(r)}," for r in data["recipes"]]
    lines.append("]")
    for section in ("workload", "quality", "engine"):
        values = {k: v for k, v in data[section].items() if v is not None}
        if values:
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _together_advice(combined: list[Any]) -> list[str]:
    """Per backend: the largest combination that held up, or what to do when none did."""
    lines = []
    for backend in dict.fromkeys(t.backend for t in combined):
        tried = [t for t in combined if t.backend == backend]
        passing = [t for t in tried if t.verdict == "adopt"]
        if passing:
            best = max(passing, key=lambda t: len(t.components))
            lines.append(
                f"- **Use together ({backend}): {' + '.join(best.components)}** "
                "(the largest combination that held up)"
            )
        else:
            lines.append(
                f"- No combination held up ({backend}): adopt one recipe (the one that moves "
                "the figure you care about) and re-run the plan on top of it."
            )
    return lines


def _env_value(value: Any) -> str:
    if isinstance(value, dict):  # package versions
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    if isinstance(value, list):  # GPU names
        return ", ".join(map(str, value)) or "none"
    return str(value)


def decision_record(result: LabResult, out_dir: Path, command: list[str] | None = None) -> str:
    """The Markdown decision record: what was tried, in what order, what was adopted, why."""
    plan = result.plan
    env = result.environment
    adopted = result.adopted
    combined = [t for t in result.trials if t.components]
    lines = [
        "# latlab optimize: decision record",
        "",
        f"- Model: `{result.model_path}`",
        f"- Started: {result.started_at}, took {result.elapsed_s:.0f} s",
        f"- Plan: {plan.source}; {plan.repeats} repetitions after {plan.warmup} warmup pass(es), "
        f"each candidate interleaved with the baseline; a change counts when it beats the "
        f"spread (max - min over median) of the repetitions, at least {plan.min_noise_pct}%",
        f"- Quality gate: top-1 agreement >= {plan.thresholds.top1_min}, mean KL <= "
        f"{plan.thresholds.mean_kl_max} on held-out text ({plan.quality_windows} windows of "
        f"{plan.quality_window_tokens} tokens); exact recipes must keep every greedy output",
        "",
        "## Environment",
        "",
        *[f"- {k}: {_env_value(v)}" for k, v in env.items()],
        "",
        "## Workload",
        "",
        f"{plan.workload.num_requests} requests of {plan.workload.prompt_len} prompt tokens "
        f"(cut from the held-out text; {plan.workload.num_prefixes} shared prefixes of "
        f"{plan.workload.shared_prefix_len} tokens, {plan.workload.repeat_fraction:.0%} exact "
        f"repeats), {plan.workload.output_len} greedy output tokens each (EOS ignored); "
        f"transformers backend one request at a time, engine backend "
        f"{plan.workload.concurrency} in flight.",
        "",
        "## Baseline",
        "",
        *_baseline_lines(result),
        "",
        "## What was tried, in order",
        "",
    ]
    for i, t in enumerate(result.trials, start=1):
        lines.append(f"{i}. **{t.name}** ({t.level}; {t.changes}): {t.verdict}: {t.reason}")
        if t.candidate is not None and t.candidate.extra:
            counts = ", ".join(f"{k} {v}" for k, v in t.candidate.extra.items())
            lines.append(f"   (first pass: {counts})")
    lines += ["", "## Adopted", ""]
    if adopted:
        lines += [f"- **{t.name}**: {t.reason}; quality: {quality_cell(t)}" for t in adopted]
    else:
        lines.append(
            "- nothing: no recipe beat the noise without hurting quality or another figure"
        )
    for t in combined:
        lines.append(
            f"- Together ({t.backend}): {t.name.removeprefix('combined: ')}: "
            f"{t.verdict}: {t.reason}"
        )
    lines += _together_advice(combined)
    lines += [
        "",
        "## Strategy table",
        "",
        "Changes are of medians against the interleaved baseline; * = beyond the spread.",
        "",
        strategy_table(result.trials),
        "",
        "## Reproduce",
        "",
        "```",
    ]
    lines.append(" ".join(shlex.quote(part) for part in (command or _command(result, out_dir))))
    lines += [
        "```",
        "",
        f"The effective plan is `{out_dir / 'plan.toml'}`; every figure of "
        f"every repetition is in `{out_dir / 'result.json'}`.",
    ]
    if result.notes:
        lines += ["", "## Errors", "", "```", *result.notes, "```"]
    return "\n".join(lines) + "\n"


def _command(result: LabResult, out_dir: Path) -> list[str]:
    return [
        "latlab",
        "optimize",
        result.model_path,
        "--plan",
        str(out_dir / "plan.toml"),
        "--out",
        str(out_dir),
    ]


def to_json(result: LabResult) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "latlab.optimize",
        "model": result.model_path,
        "started_at": result.started_at,
        "elapsed_s": round(result.elapsed_s, 3),
        "environment": result.environment,
        "plan": result.plan.to_dict(),
        "figures": {
            k: {"key": key, "lower_is_better": lower} for k, (key, lower) in FIGURES.items()
        },
        "baselines": {k: m.to_dict() for k, m in result.baselines.items()},
        "trials": [t.to_dict() for t in result.trials],
        "adopted": [t.name for t in result.adopted],
        "notes": result.notes,
    }


def write_report(result: LabResult, out_dir: Path, command: list[str] | None = None) -> dict:
    """Write table.md, decision.md, result.json and plan.toml; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "table": out_dir / "table.md",
        "decision_record": out_dir / "decision.md",
        "json": out_dir / "result.json",
        "plan": out_dir / "plan.toml",
    }
    paths["table"].write_text(strategy_table(result.trials) + "\n", encoding="utf-8")
    paths["decision_record"].write_text(decision_record(result, out_dir, command), "utf-8")
    paths["json"].write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
    paths["plan"].write_text(plan_toml(result.plan), encoding="utf-8")
    return {k: str(v) for k, v in paths.items()}
