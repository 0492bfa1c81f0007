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

from latlab.cost import Price, break_even_million_tokens, one_off_usd, usd_per_million_tokens
from latlab.optimize.lab_plan import LabPlan
from latlab.optimize.seed_claims import seed_cell, seed_column
from latlab.optimize.trial import FIGURES, LabResult, Measurement, Trial

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


def trial_seed_column(trial: Trial) -> dict[str, Any] | None:
    """The seed's claim for this trial's recipe beside the measured figure (None: no claim)."""
    if trial.components:
        return None
    deltas = {
        k: {"baseline": c.baseline, "candidate": c.candidate, "significant": c.significant}
        for k, c in trial.deltas.items()
    }
    return seed_column(trial.name, trial.verdict, deltas)


def trial_cost(trial: Trial, price: Price | None) -> dict[str, Any] | None:
    """USD per million output tokens before and after, saved, and the one-off cost."""
    change = trial.deltas.get("throughput")
    if price is None or change is None:
        return None
    before = usd_per_million_tokens(price, change.baseline)
    after = usd_per_million_tokens(price, change.candidate)
    saved = None if before is None or after is None else before - after
    one_off = one_off_usd(price, trial.setup_s)
    return {
        "usd_per_million_baseline": _round(before),
        "usd_per_million": _round(after),
        "usd_saved_per_million": _round(saved),
        "one_off_s": round(trial.setup_s, 3),
        "one_off_usd": _round(one_off),
        "break_even_million_tokens": _round(break_even_million_tokens(one_off, saved)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _cost_cell(cost: dict[str, Any] | None) -> str:
    if not cost or cost["usd_per_million"] is None:
        return "-"
    saved = cost["usd_saved_per_million"]
    return f"${cost['usd_per_million']:.4g} ({-saved:+.3g})" if saved is not None else "-"


def strategy_table(trials: list[Trial], price: Price | None = None) -> str:
    """The Markdown strategy table, one row per trial in the order tried; with a price, the
    cost per million output tokens (and its change) gets a column."""
    cost_head, cost_rule = (" $/M tokens |", "---|") if price else ("", "")
    rows = [
        f"| recipe | level | TTFT | ITL | throughput | memory |{cost_head} quality | "
        "seed's claim | verdict | reason |",
        f"|---|---|---|---|---|---|{cost_rule}---|---|---|---|",
    ]
    for t in trials:
        reason = t.reason.replace("|", "/")
        cost = f" {_cost_cell(trial_cost(t, price))} |" if price else ""
        rows.append(
            f"| {t.name} | {t.level} | {_pct(t, 'ttft')} | {_pct(t, 'itl')} | "
            f"{_pct(t, 'throughput')} | {_pct(t, 'memory')} |{cost} {quality_cell(t)} | "
            f"{seed_cell(trial_seed_column(t))} | **{t.verdict}** | {reason} |"
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
    keys = ("repeats", "warmup", "min_noise_pct", "threads", "time_budget_s", "objective",
            "price_per_hour", "price_device")  # fmt: skip
    for key in keys:
        if data[key] is not None:
            lines.append(f"{key} = {_toml_value(data[key])}")
    lines.append("recipes = [")
    lines += [f"  {_toml_value(r)}," for r in data["recipes"]]
    lines.append("]")
    for section in ("workload", "quality", "engine", "engine_env"):
        values = {k: v for k, v in data[section].items() if v is not None}
        if values:
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def verdict_lines(result: LabResult) -> list[str]:
    """What to use, decided once: the console and decision.md both print these lines.

    Per backend: the largest combination of adopted recipes that held up together; when
    none did, each adopted recipe alone with its quality (adopt one, re-run on top of it);
    a recipe adopted alone with nothing to combine it with stands as it is.
    """
    adopted = result.adopted
    if not adopted:
        return ["nothing: no recipe beat the noise without hurting quality or another figure"]
    combined = [t for t in result.trials if t.components]
    lines = []
    for backend in dict.fromkeys(t.backend for t in adopted):
        alone = [t for t in adopted if t.backend == backend]
        tried = [t for t in combined if t.backend == backend]
        passing = [t for t in tried if t.verdict == "adopt"]
        if passing:
            best = max(passing, key=lambda t: len(t.components))
            lines.append(f"use together ({backend}): {' + '.join(best.components)} "
                         f"({best.reason}; quality: {quality_cell(best)})")  # fmt: skip
            continue
        each = "; ".join(f"{t.name} ({t.reason}; quality: {quality_cell(t)})" for t in alone)
        if tried:
            lines.append(f"no combination held up ({backend}): adopt one of these alone and "
                         f"re-run the plan on top of it: {each}")  # fmt: skip
        else:
            lines.append(f"use ({backend}): {each}")
    return lines


def _env_value(value: Any) -> str:
    if isinstance(value, dict):  # package versions
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    if isinstance(value, list):  # GPU names
        return ", ".join(map(str, value)) or "none"
    return str(value)


def decision_record(result: LabResult, out_dir: Path, command: list[str] | None = None) -> str:
    """The Markdown decision record: what was tried, in what order, what was adopted, why."""
    lines = [
        "# latlab optimize: decision record",
        "",
        *_header_lines(result),
        "",
        "## Environment",
        "",
        *[f"- {k}: {_env_value(v)}" for k, v in result.environment.items()],
        "",
        "## Workload",
        "",
        _workload_line(result),
        "",
        "## Baseline",
        "",
        *_baseline_lines(result),
        "",
        "## What was tried, in order",
        "",
        *_tried_lines(result),
        "",
        "## Adopted alone",
        "",
        *_adopted_lines(result),
        "",
        "## Verdict",
        "",
        *(f"- **{line}**" for line in verdict_lines(result)),
        "",
        "## Strategy table",
        "",
        "Changes are of medians against the interleaved baseline; * = beyond the spread.",
        "",
        strategy_table(result.trials, result.plan.price),
        "",
        "## Reproduce",
        "",
        "```",
        " ".join(shlex.quote(part) for part in (command or _command(result, out_dir))),
        "```",
        "",
        f"The effective plan is `{out_dir / 'plan.toml'}`; every figure of "
        f"every repetition is in `{out_dir / 'result.json'}`.",
    ]
    if result.notes:
        lines += ["", "## Errors", "", "```", *result.notes, "```"]
    return "\n".join(lines) + "\n"


def _rule(plan: LabPlan) -> str:
    if plan.objective is None:
        return "adopt when a figure improves beyond the spread and none worsens beyond it"
    what = "USD per million output tokens (throughput at a fixed price)" if (
        plan.objective == "cost"
    ) else plan.objective  # fmt: skip
    return f"objective {plan.objective}: adopt when {what} improves beyond the spread"


def _price_line(price: Price | None) -> str:
    if price is None:
        return "no price given (--price-per-hour USD or --price-device NAME adds cost figures)"
    return (
        f"{price.describe()}; USD per million output tokens = price per hour / (output "
        "tokens/s x 3600) x 1e6 at the measured throughput"
    )


def _adopted_line(trial: Trial, price: Price | None) -> str:
    """What an adopted recipe gains, under which quality limits, and what it costs once."""
    line = f"- **{trial.name}**: {trial.reason}; quality: {quality_cell(trial)}"
    if trial.quality is not None and trial.quality.limits:
        line += f" (limits: {trial.quality.limits})"
    cost = trial_cost(trial, price)
    if cost and cost["usd_saved_per_million"] is not None:
        saved = cost["usd_saved_per_million"]
        verb = "saves" if saved >= 0 else "costs"
        line += (
            f"; {verb} ${abs(saved):.4g} per million output tokens "
            f"{'' if saved >= 0 else 'more '}"
            f"(${cost['usd_per_million_baseline']:.4g} -> ${cost['usd_per_million']:.4g})"
        )
    memory = trial.deltas.get("memory")
    if memory is not None and memory.baseline != memory.candidate:
        line += f"; memory {memory.baseline / 2**20:.2f} -> {memory.candidate / 2**20:.2f} MiB"
    if trial.setup_s >= 0.01:
        once = f"${cost['one_off_usd']:.4g} of device time, " if cost else ""
        line += f"; one-off: {once}{trial.setup_s:.1f} s to apply (and compile)"
        if cost and cost["break_even_million_tokens"] is not None:
            line += f", paid back after {cost['break_even_million_tokens']:.3g}M tokens"
    return line


def _header_lines(result: LabResult) -> list[str]:
    plan = result.plan
    return [
        f"- Model: `{result.model_path}`",
        f"- Started: {result.started_at}, took {result.elapsed_s:.0f} s",
        f"- Plan: {plan.source}; {plan.repeats} repetitions after {plan.warmup} warmup pass(es), "
        f"each candidate interleaved with the baseline; a change counts when it beats the "
        f"spread (max - min over median) of the repetitions, at least {plan.min_noise_pct}%",
        f"- Quality gate: {plan.thresholds.describe()} on held-out text "
        f"({plan.quality_windows} windows of {plan.quality_window_tokens} tokens); exact "
        "recipes must keep every greedy output",
        f"- Decision rule: {_rule(plan)}",
        f"- Cost: {_price_line(plan.price)}",
    ]


def _workload_line(result: LabResult) -> str:
    w = result.plan.workload
    return (
        f"{w.num_requests} requests of {w.prompt_len} prompt tokens "
        f"(cut from the held-out text; {w.num_prefixes} shared prefixes of "
        f"{w.shared_prefix_len} tokens, {w.repeat_fraction:.0%} exact "
        f"repeats), {w.output_len} greedy output tokens each (EOS ignored); "
        f"transformers backend one request at a time, engine backend "
        f"{w.concurrency} in flight."
    )


def _tried_lines(result: LabResult) -> list[str]:
    lines = []
    for i, t in enumerate(result.trials, start=1):
        lines.append(f"{i}. **{t.name}** ({t.level}; {t.changes}): {t.verdict}: {t.reason}")
        if t.candidate is not None and t.candidate.extra:
            counts = ", ".join(f"{k} {v}" for k, v in t.candidate.extra.items())
            lines.append(f"   (first pass: {counts})")
    return lines


def _adopted_lines(result: LabResult) -> list[str]:
    adopted = result.adopted
    combined = [t for t in result.trials if t.components]
    if adopted:
        lines = [_adopted_line(t, result.plan.price) for t in adopted]
    else:
        lines = ["- nothing: no recipe beat the noise without hurting quality or another figure"]
    for t in combined:
        lines.append(
            f"- Together ({t.backend}): {t.name.removeprefix('combined: ')}: "
            f"{t.verdict}: {t.reason}"
        )
    return lines


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
    price = result.plan.price
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
        "objective": result.plan.objective,
        "quality_limits": result.plan.thresholds.describe(),
        "price": None if price is None else price.to_dict(),
        "trials": [
            {**t.to_dict(), "seed_claim": trial_seed_column(t), "cost": trial_cost(t, price)}
            for t in result.trials
        ],
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
    table = strategy_table(result.trials, result.plan.price)
    paths["table"].write_text(table + "\n", encoding="utf-8")
    paths["decision_record"].write_text(decision_record(result, out_dir, command), "utf-8")
    paths["json"].write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
    paths["plan"].write_text(plan_toml(result.plan), encoding="utf-8")
    return {k: str(v) for k, v in paths.items()}
