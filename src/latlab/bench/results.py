"""A benchmark's result: the versioned JSON schema, per-request CSV rows, and the console table.

Schema ``latlab.bench/1`` (documented in docs/bench.md): ``schema_version``, ``created_utc``,
``target``, ``config``, ``environment``, ``warmup_requests``, ``interrupted`` and ``levels``,
each level with ``load``, ``summary`` (Summary.to_dict()), ``client`` (self-check) and
``records``. New keys may be added within a version; renaming or removing one bumps it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latlab import __version__
from latlab.bench.runner import LevelResult
from latlab.environment import environment

SCHEMA_VERSION = "latlab.bench/1"
CSV_FIELDS = ("level", "request_id", "ok", "error", "prompt_tokens", "output_tokens",
              "output_tokens_source", "ttft_ms", "tpot_ms", "e2e_ms", "queue_ms",
              "num_chunks")  # fmt: skip


@dataclass(slots=True)
class BenchResult:
    """Everything one ``run_bench`` produced; ``to_dict()`` is the JSON schema."""

    target: dict[str, Any]
    config: dict[str, Any]
    levels: list[LevelResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=environment)
    warmup_requests: int = 0
    interrupted: bool = False
    created_utc: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def completed(self) -> int:
        return sum(lv.summary.completed for lv in self.levels)

    @property
    def failed(self) -> int:
        return sum(lv.summary.failed for lv in self.levels)

    def to_dict(self, with_records: bool = True) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "latlab_version": __version__,
            "created_utc": self.created_utc,
            "target": dict(self.target),
            "config": dict(self.config),
            "environment": dict(self.environment),
            "warmup_requests": self.warmup_requests,
            "interrupted": self.interrupted,
            "levels": [lv.to_dict(with_records) for lv in self.levels],
        }

    def write_json(self, path: str | os.PathLike[str], with_records: bool = True) -> None:
        Path(path).write_text(json.dumps(self.to_dict(with_records), indent=2) + "\n")

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for lv in self.levels:
                label = ";".join(f"{k}={v}" for k, v in lv.load.items())
                for rec in lv.records:
                    w.writerow({"level": label, **rec.to_dict()})

    def render(self, console: Any | None = None) -> None:
        """Print the results table (rich); one row per load level."""
        from rich.console import Console

        console = console or Console(width=None if sys.stdout.isatty() else 140)
        console.print(results_table(self))
        for line in notes(self):
            console.print(line)


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def results_table(result: BenchResult) -> Any:
    from rich.table import Table

    t = Table(title=f"latlab bench: {result.target.get('name', '')}", title_justify="left")
    cols = ("load", "ok", "fail", "TTFT p50", "TTFT p99", "ITL p50", "gap p50", "TPOT p50",
            "E2E p50", "tok/s", "req/s", "goodput", "client")  # fmt: skip
    for c in cols:
        t.add_column(c, justify="left" if c == "load" else "right", no_wrap=True)
    for lv in result.levels:
        s = lv.summary
        load = ", ".join(f"{k} {v:g}" for k, v in lv.load.items())
        t.add_row(load, str(s.completed), str(s.failed), _f(s.ttft_ms.p50), _f(s.ttft_ms.p99),
                  _f(s.itl_ms.p50, 2), _f(s.chunk_gap_ms.p50, 2), _f(s.tpot_ms.p50, 2),
                  _f(s.e2e_ms.p50), _f(s.output_tokens_per_s), _f(s.requests_per_s, 2),
                  _f(s.goodput_rps, 2), "BOUND" if lv.client.client_bound else "ok")  # fmt: skip
    t.caption = ("ms; ITL = per token; gap = between chunks (vLLM's 'ITL'); "
                 "TPOT = (E2E-TTFT)/(tokens-1) (aiperf's 'ITL')")  # fmt: skip
    return t


def notes(result: BenchResult) -> list[str]:
    """Warnings a reader must see next to the table."""
    out = []
    for lv in result.levels:
        s, load = lv.summary, ", ".join(f"{k} {v:g}" for k, v in lv.load.items())
        if lv.client.client_bound:
            out.append(f"[yellow]client-bound at {load}: {'; '.join(lv.client.reasons)}[/]")
        if s.errors:
            errs = ", ".join(f"{k} x{v}" for k, v in sorted(s.errors.items()))
            out.append(f"[red]{s.failed} failed at {load}: {errs}[/]")
        if s.multi_token_chunks:
            out.append(f"{s.multi_token_chunks} chunks at {load} carried more than one token "
                       "(ITL divides their gap among them)")  # fmt: skip
        if s.token_count_mismatches:
            out.append(
                f"[yellow]{s.token_count_mismatches} requests at {load}: server usage and "
                "client tokenizer disagree on output tokens (usage was used)[/]"
            )
    sources = {k for lv in result.levels for k in lv.summary.output_tokens_source}
    if sources:
        out.append(f"output tokens counted from: {', '.join(sorted(sources))}")
    if result.interrupted:
        out.append("[yellow]interrupted: figures cover the requests measured before Ctrl-C[/]")
    return out
