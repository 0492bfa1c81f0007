"""Prometheus recording and alerting rules for latency and availability SLOs.

Layout (one file, four groups, the shape Sloth and Pyrra generate, written for LLM servers):

- ``slo:sli_error:ratio_rate<W>`` per SLO and window: the share of bad requests (latency over
  the threshold's bucket edge, or 5xx answers) over ``W``;
- metadata: objective, error budget, current burn rate, budget left in the period;
- one page and one ticket alert per SLO, each an OR of (long AND short window) pairs;
- saturation alerts: waiting queue growing, KV cache nearly full, preemptions, 5xx rate,
  server down, and the ``latlab watch`` probe failing or seeing its SLO breached;
- with a gateway job, a fifth group for ``latlab gateway``: down, no healthy upstream, an
  upstream ejected, 5xx answers, a CPU-bound process, cache or limit store failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latlab.errors import ConfigError
from latlab.monitor.buckets import EdgeChoice, check_threshold, le_matcher
from latlab.monitor.durations import format_duration
from latlab.monitor.names import MetricNames
from latlab.monitor.promql import job_matcher, rate, ratio_over, selector
from latlab.monitor.saturation import gateway_rules, saturation_rules
from latlab.monitor.slo import BurnWindow, LatencySLO, check_fireable
from latlab.monitor.spec import RuleSpec

GENERATION_HANDLERS = 'handler=~"/v1/(chat/)?completions"'
_TITLE = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "availability": "Availability"}


@dataclass(kw_only=True, slots=True)
class RuleFile:
    groups: list[dict[str, Any]]
    notes: list[str]  # bucket roundings and other things the user must know
    edges: dict[str, EdgeChoice]


@dataclass(kw_only=True, frozen=True, slots=True)
class _SLI:
    """One SLO ready for rules: its name, budget and error-ratio expression per window."""

    name: str
    title: str
    budget: float
    objective: float
    description: str
    error_ratio: Any  # Callable[[str], str]: window -> expression
    windows: tuple[BurnWindow, ...] = ()  # the pairs its alerts use


def build_rules(spec: RuleSpec) -> RuleFile:
    """The rule groups for ``spec``; ConfigError for SLOs the server cannot measure."""
    if not spec.windows:
        raise ConfigError("give at least one burn-rate window")
    slis, notes, choices = _slis(spec)
    if not slis:
        raise ConfigError(
            "give at least one SLO: --slo-ttft-ms, --slo-tpot-ms, --slo-e2e-ms or --objective"
        )
    groups = [
        _sli_group(spec, slis),
        _meta_group(spec, slis),
        _alert_group(spec, slis),
        _saturation_group(spec, notes),
    ]
    if spec.gateway_job:
        groups.append({"name": f"latlab-{spec.service}-gateway", "rules": gateway_rules(spec)})
    return RuleFile(groups=groups, notes=notes, edges=choices)


def to_yaml(rule_file: RuleFile, header: str = "") -> str:
    """The rule file as YAML (multi-line expressions as literal blocks), with a comment header."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, text)
    body = yaml.dump({"groups": rule_file.groups}, Dumper=_Dumper, sort_keys=False, width=120)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"# NOTE: {note}" for note in rule_file.notes]
    return "\n".join(lines) + ("\n" if lines else "") + body


def _sel(spec: RuleSpec, *more: str | None) -> str:
    return selector(job_matcher(spec.job), spec.matchers, *more)


def _slis(spec: RuleSpec) -> tuple[list[_SLI], list[str], dict[str, EdgeChoice]]:
    slis, notes, choices = [], [], {}
    for slo in spec.latency:
        windows = _fireable(spec, slo.budget, f"{_TITLE[slo.role]} SLO", notes)
        metric = _latency_metric(spec.names, slo.role, notes)
        edges = spec.edges.get(slo.role, ())
        choice = check_threshold(
            slo.threshold_s,
            edges,
            metric=metric,
            role=slo.role,
            backend=spec.names.backend,
            rounding=spec.rounding,
        )
        choices[slo.role] = choice
        if choice.note:
            notes.append(choice.note)
        slis.append(_latency_sli(spec, slo, metric, choice, windows))
    if spec.availability is not None:
        if spec.names.http_requests is None:
            notes.append("availability SLO skipped: this server exports no HTTP status counter")
        else:
            windows = _fireable(spec, 1 - spec.availability, "availability SLO", notes)
            slis.append(_availability_sli(spec, spec.availability, windows))
    return slis, notes, choices


def _fireable(spec: RuleSpec, budget: float, what: str, notes: list[str]) -> tuple[BurnWindow, ...]:
    if not spec.drop_unfireable:
        check_fireable(spec.windows, budget, what)
        return spec.windows
    kept = tuple(w for w in spec.windows if w.burn_rate * budget < 1.0)
    for w in spec.windows:
        if w not in kept:
            notes.append(f"{what}: no {w.severity} alert over {w.label} at {w.burn_rate:g}x: with "
                         f"a {budget:.4g} error budget it could never fire")  # fmt: skip
    if not kept:
        check_fireable(spec.windows, budget, what)
    return kept


def _latency_metric(names: MetricNames, role: str, notes: list[str]) -> str:
    if role == "ttft":
        return names.ttft
    if role == "e2e":
        return names.e2e
    if names.tpot:
        return names.tpot
    notes.append(
        f"{names.backend} before 0.11 (names of {names.since}) has no per-request TPOT histogram; "
        "the TPOT SLO is "
        f"measured on {names.itl} (one sample per token, a stricter measure)"
    )
    return names.itl


def _latency_sli(
    spec: RuleSpec,
    slo: LatencySLO,
    metric: str,
    choice: EdgeChoice,
    windows: tuple[BurnWindow, ...],
) -> _SLI:
    total_sel, good_sel = _sel(spec), _sel(spec, le_matcher(choice.edge_s))

    def error_ratio(window: str) -> str:
        total = f"sum({rate(metric + '_count', total_sel, window)})"
        good = f"sum({rate(metric + '_bucket', good_sel, window)})"
        return ratio_over(f"{total}\n  -\n  {good}", total)

    title = _TITLE[slo.role]
    return _SLI(
        name=slo.role,
        title=title,
        budget=slo.budget,
        objective=slo.target,
        description=f"{slo.target:.4%} of requests with {title} <= {choice.edge_s * 1000:g} ms "
        f"({metric})",
        error_ratio=error_ratio,
        windows=windows,
    )


def _availability_sli(spec: RuleSpec, objective: float, windows: tuple[BurnWindow, ...]) -> _SLI:
    metric = spec.names.http_requests or ""
    bad_sel = _sel(spec, GENERATION_HANDLERS, 'status="5xx"')
    all_sel = _sel(spec, GENERATION_HANDLERS)

    def error_ratio(window: str) -> str:
        bad = f"sum({rate(metric, bad_sel, window)}) or vector(0)"
        return ratio_over(bad, f"sum({rate(metric, all_sel, window)})")

    return _SLI(
        name="availability",
        title="Availability",
        budget=1 - objective,
        objective=objective,
        description=f"{objective:.4%} of generation requests answered without a 5xx ({metric})",
        error_ratio=error_ratio,
        windows=windows,
    )


def _windows(spec: RuleSpec) -> list[str]:
    seconds = sorted({w.short_s for w in spec.windows} | {w.long_s for w in spec.windows})
    return [format_duration(s) for s in seconds]


def _labels(spec: RuleSpec, sli: _SLI, **more: str) -> dict[str, str]:
    return {"service": spec.service, "slo": sli.name, **more}


def _match(spec: RuleSpec, sli: _SLI) -> str:
    return f'{{service="{spec.service}",slo="{sli.name}"}}'


def _sli_group(spec: RuleSpec, slis: list[_SLI]) -> dict[str, Any]:
    rules = [
        {
            "record": f"slo:sli_error:ratio_rate{w}",
            "expr": sli.error_ratio(w),
            "labels": _labels(spec, sli, slo_window=w),
        }
        for sli in slis
        for w in _windows(spec)
    ]
    return {"name": f"latlab-slo-{spec.service}-sli", "rules": rules}


def _meta_group(spec: RuleSpec, slis: list[_SLI]) -> dict[str, Any]:
    shortest, period = _windows(spec)[0], format_duration(spec.period_s)
    rules: list[dict[str, Any]] = []
    for sli in slis:
        m, labels = _match(spec, sli), _labels(spec, sli)
        rules += [
            {
                "record": "slo:objective:ratio",
                "expr": f"vector({sli.objective:.6g})",
                "labels": labels,
            },
            {
                "record": "slo:error_budget:ratio",
                "expr": f"vector({sli.budget:.6g})",
                "labels": labels,
            },
            {
                "record": "slo:current_burn_rate:ratio",
                "expr": f"slo:sli_error:ratio_rate{shortest}{m} / {sli.budget:.6g}",
                "labels": labels,
            },
            {
                "record": f"slo:sli_error:ratio_rate{period}",
                "expr": f"avg_over_time(slo:sli_error:ratio_rate{shortest}{m}[{period}])",
                "labels": _labels(spec, sli, slo_window=period),
            },
            {
                "record": "slo:period_error_budget_remaining:ratio",
                "expr": f"1 - slo:sli_error:ratio_rate{period}{m} / {sli.budget:.6g}",
                "labels": labels,
            },
        ]
    return {"name": f"latlab-slo-{spec.service}-meta", "rules": rules}


def _burn_condition(sli: _SLI, m: str, window: BurnWindow) -> str:
    threshold = f"({window.burn_rate:g} * {sli.budget:.6g})"
    pair = [
        f"max without (slo_window) (slo:sli_error:ratio_rate{format_duration(s)}{m} > {threshold})"
        for s in (window.long_s, window.short_s)
    ]
    return "(\n  " + "\n  and\n  ".join(pair) + "\n)"


def _alert_group(spec: RuleSpec, slis: list[_SLI]) -> dict[str, Any]:
    rules = []
    for sli in slis:
        for severity in ("page", "ticket"):
            windows = [w for w in sli.windows if w.severity == severity]
            if not windows:
                continue
            m = _match(spec, sli)
            expr = "\nor\n".join(_burn_condition(sli, m, w) for w in windows)
            pairs = ", ".join(f"{w.label} at {w.burn_rate:g}x" for w in windows)
            rules.append(
                {
                    "alert": f"Latlab{sli.title}BurnRate{severity.title()}",
                    "expr": expr,
                    "labels": {"severity": severity, **_labels(spec, sli)},
                    "annotations": {
                        "summary": f"{spec.service}: {sli.title} SLO is burning its error budget "
                        f"too fast ({severity})",
                        "description": f"SLO: {sli.description}. Error budget {sli.budget:.4%}. "
                        f"Bad share {{{{ $value | humanizePercentage }}}} over the long window "
                        f"(windows long/short at burn rate: {pairs}). "
                        "What users see: latlab watch.",
                    },
                }
            )
    return {"name": f"latlab-slo-{spec.service}-alerts", "rules": rules}


def _saturation_group(spec: RuleSpec, notes: list[str]) -> dict[str, Any]:
    return {"name": f"latlab-{spec.service}-saturation", "rules": saturation_rules(spec, notes)}
