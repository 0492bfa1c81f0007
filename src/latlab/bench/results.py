"""A benchmark's result: the versioned JSON schema, per-request CSV rows, and the console table.

Schema ``latlab.bench/1`` (documented in docs/bench.md): ``schema_version``, ``created_utc``,
``target``, ``config``, ``environment``, ``workload``, ``warmup_requests``, ``interrupted`` and
``levels``,
each level with ``load``, ``summary`` (Summary.to_dict()), ``client`` (self-check) and
``records``. New keys may be added within a version; renaming or removing one bumps it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latlab import __version__
from latlab.bench.runner import LevelResult
from latlab.environment import environment

SCHEMA_VERSION = "latlab.bench/1"
SET_SCHEMA_VERSION = "latlab.bench-set/1"  # several targets side by side (--backend a,b)
CSV_FIELDS = ("level", "request_id", "ok", "error", "prompt_tokens", "prompt_tokens_requested",
              "cached_tokens", "output_tokens", "output_tokens_source", "ttft_ms", "tpot_ms",
              "e2e_ms", "queue_ms", "num_chunks")  # fmt: skip


@dataclass(slots=True)
class BenchResult:
    """Everything one ``run_bench`` produced; ``to_dict()`` is the JSON schema."""

    target: dict[str, Any]
    config: dict[str, Any]
    levels: list[LevelResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=environment)
    warmup_requests: int = 0
    interrupted: bool = False
    workload: dict[str, Any] = field(default_factory=dict)  # salt, how prompts were sized
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
            "workload": dict(self.workload),
            "warmup_requests": self.warmup_requests,
            "interrupted": self.interrupted,
            "trust": self.trust(),
            "levels": [lv.to_dict(with_records) for lv in self.levels],
        }

    def trust(self) -> dict[str, Any]:
        """Whether the target's replies could all be believed: ``flagged`` when any usage figure
        was rejected or any reply broke the protocol, with counts per problem and the sources
        the output token counts came from instead."""
        usage: Counter[str] = Counter()
        problems: Counter[str] = Counter()
        sources: Counter[str] = Counter()
        for lv in self.levels:
            usage.update(lv.summary.usage_rejected)
            problems.update(lv.summary.reply_problems)
            sources.update(lv.summary.output_tokens_source)
        return {"flagged": bool(usage or problems), "usage_rejected": dict(usage),
                "reply_problems": dict(problems),
                "output_tokens_source": dict(sources)}  # fmt: skip

    def write_json(self, path: str | os.PathLike[str], with_records: bool = True) -> None:
        Path(path).write_text(json.dumps(self.to_dict(with_records), indent=2) + "\n")

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        write_csv_rows([self], path)

    def render(self, console: Any | None = None) -> None:
        """Print the results table (rich); one row per load level."""
        from rich.console import Console

        console = console or Console(width=None if sys.stdout.isatty() else 170)
        console.print(results_table(self))
        for line in notes(self):
            console.print(line)


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


# Prompt lengths further than this from the request are worth a warning.
PROMPT_LENGTH_TOLERANCE = 0.05
# A workload that shares no prefix on purpose should see almost no prefix-cache hits.
UNEXPECTED_CACHE_HITS = 0.02


def _load(lv: LevelResult) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in lv.load.items())


def _prompt_cell(s: Any) -> str:
    """Measured prompt tokens (mean) and, when they differ, the requested ones."""
    pl = s.prompt_length
    if pl is None:
        return "-"
    if round(pl.measured_mean) == round(pl.requested_mean):
        return f"{pl.measured_mean:,.0f}"
    return f"{pl.measured_mean:,.0f}/{pl.requested_mean:,.0f}"


def results_table(*results: BenchResult) -> Any:
    """One row per load level; several results (targets side by side) get a target column."""
    from rich.table import Table

    many = len(results) > 1
    title = "latlab bench: " + ("; ".join(r.target.get("name", "") for r in results))
    t = Table(title=title, title_justify="left")
    cols = ["target"] * many + ["load", "ok", "fail", "TTFT p50", "TTFT p99", "ITL p50"]
    cols += ["gap p50", "TPOT p50", "E2E p50", "tok/s", "req/s", "goodput"]
    summaries = [lv.summary for r in results for lv in r.levels]
    show_prompt = any(s.prompt_length is not None for s in summaries)
    show_cache = any(s.cache is not None for s in summaries)
    cols += ["prompt"] * show_prompt + ["cache"] * show_cache + ["client"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("target", "load") else "right", no_wrap=True)
    for result in results:
        label = [_short_name(result)] * many
        for lv in result.levels:
            row = _row(lv, show_prompt, show_cache)
            t.add_row(*label, *row)
            for gateway in _gateway_rows(lv, len(row)):  # through latlab gateway: hits apart
                t.add_row(*[""] * many, *gateway)
    t.caption = ("ms; ITL = per token; gap = between chunks (vLLM's 'ITL'); "
                 "TPOT = (E2E-TTFT)/(tokens-1) (aiperf's 'ITL')")  # fmt: skip
    if show_prompt:
        t.caption += "; prompt = tokens the target counted (/requested when they differ)"
    if show_cache:
        t.caption += "; cache = prompt tokens served from the prefix cache"
    return t


def _short_name(result: BenchResult) -> str:
    """``transformers`` / ``latlab-engine``: a target's kind, for a comparison's rows."""
    return str(result.target.get("name", "")).split(":", 1)[0]


def _row(lv: LevelResult, show_prompt: bool, show_cache: bool) -> list[str]:
    s = lv.summary
    row = [_load(lv), str(s.completed), str(s.failed), _f(s.ttft_ms.p50), _f(s.ttft_ms.p99),
           _f(s.itl_ms.p50, 2), _f(s.chunk_gap_ms.p50, 2), _f(s.tpot_ms.p50, 2), _f(s.e2e_ms.p50),
           _f(s.output_tokens_per_s), _f(s.requests_per_s, 2), _f(s.goodput_rps, 2)]  # fmt: skip
    if show_prompt:
        row.append(_prompt_cell(s))
    if show_cache:
        row.append("-" if s.cache is None else f"{s.cache.hit_rate:.0%}")
    return [*row, "BOUND" if lv.client.client_bound else "ok"]


def _gateway_rows(lv: LevelResult, width: int) -> list[list[str]]:
    """Under a level's row, one per latlab gateway cache outcome (hit, miss, coalesced)."""
    rows = []
    for label, c in lv.by_gateway_cache.items():
        cells = [f"  gateway {label}", str(c.completed), str(c.failed), _f(c.ttft_ms.p50),
                 _f(c.ttft_ms.p99), _f(c.itl_ms.p50, 2), _f(c.chunk_gap_ms.p50, 2),
                 _f(c.tpot_ms.p50, 2), _f(c.e2e_ms.p50), "", "", ""]  # fmt: skip
        rows.append(cells + [""] * (width - len(cells)))
    return rows


def write_csv_rows(results: list[BenchResult], path: str | os.PathLike[str]) -> None:
    """One row per request; with several targets the level says whose it was."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for result in results:
            who = f"{_short_name(result)};" if len(results) > 1 else ""
            for lv in result.levels:
                label = who + ";".join(f"{k}={v}" for k, v in lv.load.items())
                for rec in lv.records:
                    w.writerow({"level": label, **rec.to_dict()})


def render_all(results: list[BenchResult], console: Any | None = None) -> None:
    """Several results as one table (targets side by side), then each one's notes."""
    if len(results) == 1:
        results[0].render(console)
        return
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 170)
    console.print(results_table(*results))
    each = [notes(result) for result in results]
    for line in each[0]:  # what every target's notes say, once
        if all(line in other for other in each[1:]):
            console.print(line)
    for result, lines in zip(results, each, strict=True):
        for line in lines:
            if not all(line in other for other in each):
                console.print(f"{_short_name(result)}: {line}")


def write_all_json(results: list[BenchResult], path: str | os.PathLike[str]) -> None:
    """One result as ``latlab.bench/1``; several as ``{"schema_version":
    "latlab.bench-set/1", "runs": [each result]}``."""
    if len(results) == 1:
        results[0].write_json(path)
        return
    data = {"schema_version": SET_SCHEMA_VERSION, "runs": [r.to_dict() for r in results]}
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def notes(result: BenchResult) -> list[str]:
    """Warnings a reader must see next to the table."""
    out = []
    for lv in result.levels:
        s, load = lv.summary, _load(lv)
        if lv.client.client_bound:
            out.append(f"[yellow]client-bound at {load}: {'; '.join(lv.client.reasons)}[/]")
        if s.errors:
            out += _failure_notes(lv, load)
        if s.multi_token_chunks:
            out.append(f"{s.multi_token_chunks} chunks at {load} carried more than one token "
                       "(ITL divides their gap among them)")  # fmt: skip
        if s.token_count_mismatches:
            out.append(
                f"[yellow]{s.token_count_mismatches} requests at {load}: server usage and "
                "client tokenizer disagree on output tokens (usage was used)[/]"
            )
        out += _workload_notes(result, s, load)
        out += _reply_notes(result, lv, load)
    sources = {k for lv in result.levels for k in lv.summary.output_tokens_source}
    if sources:
        out.append(f"output tokens counted from: {', '.join(sorted(sources))}")
    out += _sizing_notes(result)
    salt = result.workload.get("salt")
    if salt:
        out.append(f"every prompt starts with its own tag (salt {salt!r}; --salt {salt} "
                   "repeats these prompts; --no-salt sends the same ones every level)")  # fmt: skip
    if result.interrupted:
        out.append("[yellow]interrupted: figures cover what was measured before Ctrl-C/SIGTERM[/]")
    if result.trust()["flagged"]:
        out.append("[bold red]FLAGGED: the target's replies cannot all be believed (see "
                   "above and the JSON's trust section)[/]")  # fmt: skip
    return out


def _sizing_notes(result: BenchResult) -> list[str]:
    """How prompt lengths were made exact, or why they are not."""
    words = result.workload.get("prompt_words")
    if not words:
        return []
    if words.get("exact"):
        added = f"{words['offset']} token{'s' * (words['offset'] != 1)}"
        return [f"prompt lengths exact in the target's tokens ({words['source']}: "
                f"{words['words']} one-token words, {added} added to every prompt)"]  # fmt: skip
    if result.config.get("dataset") in ("synthetic", "shared-prefix"):
        return [f"[yellow]prompt lengths are approximate: {words['source']}; the prompt "
                "column shows what the target counted[/]"]  # fmt: skip
    return []


def _failure_notes(lv: LevelResult, load: str, top: int = 3) -> list[str]:
    """Counts per reason, and the server's own words for the most frequent reasons."""
    from rich.markup import escape

    s = lv.summary
    errs = ", ".join(f"{k} x{v}" for k, v in sorted(s.errors.items(), key=lambda kv: -kv[1]))
    out = [f"[red]{s.failed} failed at {load}: {errs}[/]"]
    for reason, _ in sorted(s.errors.items(), key=lambda kv: -kv[1])[:top]:
        details = Counter(r.error_detail for r in lv.records
                          if r.error == reason and r.error_detail and not r.warmup)  # fmt: skip
        if details:
            detail, n = details.most_common(1)[0]
            out.append(f"  {reason}: {escape(detail)}" + (f" (x{n})" if n > 1 else ""))
    return out


def _reply_notes(result: BenchResult, lv: LevelResult, load: str) -> list[str]:
    """Usage a server got wrong, replies shorter than asked, first tokens without text."""
    from rich.markup import escape

    s, out = lv.summary, []
    if s.usage_rejected:
        example = next(d for r in lv.records for d in r.usage_rejected.values())
        problems = ", ".join(f"{k} x{v}" for k, v in sorted(s.usage_rejected.items()))
        sources = ", ".join(sorted(k for k in s.output_tokens_source if k != "usage")) or "-"
        out.append(f"[red]the server's usage was not believed at {load}: {problems} (e.g. "
                   f"{escape(example)}); output tokens counted from: {sources}[/]")  # fmt: skip
    if s.reply_problems:
        example = next(d for r in lv.records for d in r.reply_problems.values())
        problems = ", ".join(f"{k} x{v}" for k, v in sorted(s.reply_problems.items()))
        out.append(f"[red]replies at {load} broke the protocol: {problems} (e.g. "
                   f"{escape(example)})[/]")  # fmt: skip
    if s.stopped_early:
        reasons = ", ".join(f"{k} x{v}" for k, v in sorted(s.finish_reasons.items()))
        if result.config.get("ignore_eos"):
            out.append(f"[yellow]{s.stopped_early} replies at {load} ended before max_tokens "
                       f"though --ignore-eos asked for exactly that many (finish reasons: "
                       f"{reasons}): does the target honour ignore_eos?[/]")  # fmt: skip
        else:
            out.append(f"{s.stopped_early} of {s.completed} replies at {load} ended before "
                       f"max_tokens (finish reasons: {reasons})")  # fmt: skip
    if s.first_token_empty:
        out.append(f"{s.first_token_empty} replies at {load} began with a token chunk without "
                   "text; TTFT counts it (records' first_text_ms: the first text)")  # fmt: skip
    return out


def _workload_notes(result: BenchResult, s: Any, load: str) -> list[str]:
    """Prompts not as long as asked; prefix-cache hits the workload did not design."""
    out = []
    pl = s.prompt_length
    if pl is not None and pl.mean_abs_error > PROMPT_LENGTH_TOLERANCE:
        out.append(
            f"[yellow]prompts at {load} were {pl.measured_mean:,.0f} tokens on average where "
            f"{pl.requested_mean:,.0f} were asked ({pl.mean_abs_error:.0%} off)[/]"
        )
    cache = s.cache
    if cache is None:
        return out
    shared = result.config.get("dataset") == "shared-prefix"
    if not shared and cache.hit_rate > UNEXPECTED_CACHE_HITS:
        out.append(
            f"[yellow]the server served {cache.hit_rate:.0%} of the prompt tokens at {load} "
            "from its prefix cache though this workload shares no prefix: TTFT is "
            "understated (unsalted prompts sent before? a chat template's fixed start?)[/]"
        )
    elif shared:
        designed = result.config.get("prefix_len", 0) / (cache.prompt_tokens / cache.requests)
        out.append(f"prefix cache at {load}: {cache.hit_rate:.0%} of prompt tokens "
                   f"(each prompt shares its first {designed:.0%})")  # fmt: skip
        if cache.hit_rate < designed / 2:
            out.append("[yellow]the shared prefixes hit the server's cache far less than "
                       "designed: is prefix caching off on the server?[/]")  # fmt: skip
    return out
