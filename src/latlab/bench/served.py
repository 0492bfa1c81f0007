"""Benchmark servers latlab launches itself: ``latlab bench --backend vllm,latlab-server``.

Each server is launched through :mod:`latlab.deploy` (cold start timed, KV capacity and
version read from its log), then measured over HTTP by the same runner as ``--url``, so two
servers compare on one workload with one client. All servers are up before the first is
measured and each is measured with the others idle beside it, so neither pays for a
neighbour's start-up; every server is stopped (its whole process group) on success, error and
Ctrl-C. Each result records the launch: command, flags, environment, version, cold start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from latlab.bench.api import BenchConfig, run_bench
from latlab.bench.results import BenchResult
from latlab.deploy import Backend, Deployment, LaunchSettings, launch


@dataclass(kw_only=True, slots=True)
class ServerRun:
    """One server to launch and measure."""

    backend: Backend
    settings: LaunchSettings
    label: str | None = None  # how tables name it (default: the backend's name)


def bench_servers(
    config: BenchConfig,
    runs: Sequence[ServerRun],
    *,
    tokenizer: Any | None = None,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Launch every server, measure each in turn with ``config``, stop them all."""
    from latlab.bench.targets import OpenAITarget

    tell = say or (lambda _: None)
    servers: list[Deployment] = []
    labels: dict[int, str] = {}
    try:
        for run in runs:
            server = launch(run.backend, run.settings, progress=tell)
            servers.append(server)
            labels[id(server)] = run.label or run.backend.name
            tell(_launched(server))
        results = []
        for server in servers:
            tell(f"{server.backend}: measuring {server.url}")
            target = OpenAITarget(server.url, model=server.model, tokenizer=tokenizer,
                                  api=config.api)  # fmt: skip
            target.name = f"{server.backend} ({server.url})"
            result = run_bench(config, target, progress=progress)
            result.target["server"] = server.to_dict()
            result.target["label"] = labels[id(server)]
            results.append(result)
            if result.interrupted:
                break
        return results
    finally:
        for server in servers:
            server.stop()


def _launched(server: Deployment) -> str:
    cold = server.cold_start
    first = "-" if cold.first_token_s is None else f"{cold.first_token_s:.1f} s"
    kv = server.facts.kv_cache_tokens
    return (
        f"{server.backend} {server.facts.version or ''}: healthy {cold.healthy_s:.1f} s, "
        f"first token {first} after launch"
        + (f", KV cache {kv:,} tokens" if kv is not None else "")
    )


def comparison_rows(results: Sequence[BenchResult]) -> list[dict[str, Any]]:
    """Per load level, each server's headline figures and the ratio to the first server."""
    rows: list[dict[str, Any]] = []
    if not results:
        return rows
    base = results[0]
    for index, level in enumerate(base.levels):
        for result in results:
            if index >= len(result.levels):
                continue
            s, b = result.levels[index].summary, level.summary
            server = result.target.get("server", {})
            rows.append({
                "load": dict(level.load),
                "backend": result.target.get("label") or server.get("backend"),
                "cold_start_s": (server.get("cold_start") or {}).get("first_token_s"),
                "ttft_ms_p50": s.ttft_ms.p50,
                "tpot_ms_p50": s.tpot_ms.p50,
                "output_tokens_per_s": s.output_tokens_per_s,
                "throughput_vs_first": _ratio(s.output_tokens_per_s, b.output_tokens_per_s),
                "ttft_vs_first": _ratio(s.ttft_ms.p50, b.ttft_ms.p50),
            })  # fmt: skip
    return rows


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def comparison_table(results: Sequence[BenchResult]) -> Any:
    """A rich table: one row per server and level, ratios against the first server."""
    from rich.table import Table

    table = Table(title="servers compared (ratios: against the first server)", title_justify="left")
    for column in ("load", "server", "cold start", "TTFT p50", "TPOT p50", "tok/s",
                   "tok/s ratio", "TTFT ratio"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("load", "server") else "right")
    for row in comparison_rows(results):
        table.add_row(
            ", ".join(f"{k} {v:g}" for k, v in row["load"].items()), str(row["backend"]),
            _fmt(row["cold_start_s"], " s"), _fmt(row["ttft_ms_p50"], " ms"),
            _fmt(row["tpot_ms_p50"], " ms", 2), _fmt(row["output_tokens_per_s"], ""),
            _fmt(row["throughput_vs_first"], "x", 2), _fmt(row["ttft_vs_first"], "x", 2),
        )  # fmt: skip
    return table


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"
