"""Console views of stored runs (rich): the listing and one run's details.

They read the result JSON (never library objects), so a run recorded by an older latlab, or
read from a file, shows the same way.
"""

from __future__ import annotations

from typing import Any

from latlab.runs.describe import load_label
from latlab.runs.store import Run, RunInfo


def _when(utc: str) -> str:
    return utc.replace("T", " ").removesuffix("+00:00")[:16] if utc else "-"


def runs_table(infos: list[RunInfo], title: str) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("id", "when (UTC)", "kind", "name", "target", "what", "tags"):
        t.add_column(col, justify="right" if col == "id" else "left", overflow="fold")
    for info in infos:
        t.add_row(
            str(info.id),
            _when(info.created_utc),
            info.kind,
            info.name or "",
            info.target,
            info.headline,
            ", ".join(info.tags),
        )
    return t


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def bench_levels_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="levels", title_justify="left")
    cols = (
        "load",
        "ok",
        "fail",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "TPOT p50",
        "E2E p50",
        "tok/s",
        "req/s",
        "goodput",
    )
    for c in cols:
        t.add_column(c, justify="left" if c == "load" else "right", no_wrap=True)
    for lv in result.get("levels") or ():
        s = lv.get("summary") or {}

        def p(figure: str, q: str, s: dict[str, Any] = s) -> Any:
            return (s.get(figure) or {}).get(q)

        t.add_row(
            load_label(lv.get("load") or {}),
            str(s.get("completed", "-")),
            str(s.get("failed", "-")),
            _f(p("ttft_ms", "p50")),
            _f(p("ttft_ms", "p99")),
            _f(p("itl_ms", "p50"), 2),
            _f(p("tpot_ms", "p50"), 2),
            _f(p("e2e_ms", "p50")),
            _f(s.get("output_tokens_per_s")),
            _f(s.get("requests_per_s"), 2),
            _f(s.get("goodput_rps"), 2),
        )
    t.caption = "ms; figures as defined in docs/metrics.md"
    return t


def optimize_trials_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="trials", title_justify="left")
    figures = list((result.get("figures") or {}).keys())
    for c in ("recipe", "level", *figures, "verdict", "reason"):
        t.add_column(c, justify="right" if c in figures else "left", overflow="fold")
    for trial in result.get("trials") or ():
        deltas = trial.get("deltas") or {}
        cells = []
        for fig in figures:
            d = deltas.get(fig) or {}
            pct = d.get("change_pct")
            mark = "*" if d.get("significant") else ""
            cells.append("-" if pct is None else f"{pct:+.1f}%{mark}")
        t.add_row(
            trial.get("name", ""),
            trial.get("level", ""),
            *cells,
            trial.get("verdict", ""),
            trial.get("reason", ""),
        )
    t.caption = "change against the baseline; * = beyond the spread of repetitions"
    return t


def watch_windows_table(result: dict[str, Any]) -> Any:
    """A watch run: one row per window of probes, with the SLO verdict it ended on."""
    from rich.table import Table

    q = f"p{(result.get('config') or {}).get('percentile', 99.0):g}"
    t = Table(title="windows", title_justify="left")
    for c in ("window", "from (UTC)", "to", "probes", "failed", "TTFT p50", f"TTFT {q}",
              f"TPOT {q}", "SLO", "reasons"):  # fmt: skip
        t.add_column(c, justify="left" if c in ("window", "SLO", "reasons") else "right")
    for lv in result.get("levels") or ():
        verdict = lv.get("verdict") or {}
        client = verdict.get("client_ms") or {}
        t.add_row(
            lv.get("label", ""),
            _when(lv.get("started_utc", "")),
            _when(lv.get("ended_utc", ""))[11:],
            str(lv.get("probes", "-")),
            str(lv.get("failed", "-")),
            _f((client.get("ttft") or {}).get("p50")),
            _f((client.get("ttft") or {}).get(q)),
            _f((client.get("tpot") or {}).get(q), 2),
            verdict.get("state", "-"),
            "; ".join(verdict.get("reasons") or ()),
        )
    t.caption = "ms, client side, over the SLO window that ended with each row's probes"
    return t


def _provenance_lines(run: Run) -> list[str]:
    info, result = run.info, run.result
    env = result.get("environment") or {}
    lines = [
        f"[bold]run {info.id if info.id is not None else run.where}[/] ({info.kind})"
        + (f" [bold]{info.name}[/]" if info.name else ""),
        f"created  {_when(info.created_utc)} UTC"
        + (f", recorded {_when(info.recorded_utc)}" if info.recorded_utc else ""),
        f"target   {info.target}",
    ]
    settings = (result.get("target") or {}).get("settings")
    if settings:
        lines.append("settings " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    if info.tags:
        lines.append("tags     " + ", ".join(info.tags))
    if env:
        pkgs = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items())
        lines.append(
            f"machine  {env.get('cpu_model', '?')} x{env.get('cpu_cores', '?')}"
            + (f", GPUs {', '.join(env['gpus'])}" if env.get("gpus") else "")
        )
        lines.append(f"software Python {env.get('python', '?')}; {pkgs}")
    if info.command:
        lines.append("command  " + " ".join(info.command))
    if info.source_path:
        lines.append(f"file     {info.source_path}")
    lines.append(f"summary  {info.headline}")
    return lines


def show(run: Run) -> list[Any]:
    """What ``latlab runs show`` prints: provenance lines, then the run's own table."""
    out: list[Any] = list(_provenance_lines(run))
    if run.kind == "bench":
        out.append(bench_levels_table(run.result))
    elif run.kind == "optimize":
        out.append(optimize_trials_table(run.result))
    elif run.kind == "watch":
        out.append(watch_windows_table(run.result))
    return out
