"""Showing the watch: a live rich panel on a terminal, one line per cycle otherwise, or JSON."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from latlab.watch.server import ServerFigures
from latlab.watch.window import Verdict


@dataclass(kw_only=True, slots=True)
class Snapshot:
    """Everything one cycle ends with."""

    target: str
    model: str | None
    cycle: int
    verdict: Verdict
    server: ServerFigures
    percentile: float
    slo: dict[str, float | None]
    window_s: float
    next_in_s: float
    backing_off: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": time.time(),
            "target": self.target,
            "model": self.model,
            "cycle": self.cycle,
            "verdict": self.verdict.to_dict(),
            "server": self.server.to_dict(),
            "slo": self.slo,
            "percentile": self.percentile,
            "window_s": self.window_s,
            "next_in_s": round(self.next_in_s, 3),
            "backing_off": self.backing_off,
            "notes": self.notes,
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def status_line(s: Snapshot) -> str:
    v = s.verdict
    state = {"ok": "OK", "breach": "BREACH", "no_data": "NO DATA"}[v.state]
    key = f"p{s.percentile:g}"
    parts = [f"{time.strftime('%H:%M:%S')} {state:7s}", f"{v.probes} probes ({v.failed} failed)"]
    ttft = v.client_ms.get("ttft", {})
    if ttft.get("p50") is not None:
        parts.append(f"TTFT p50 {_ms(ttft.get('p50'))} {key} {_ms(ttft.get(key))} ms")
    server_ttft = s.server.ms.get("ttft", {}).get("mean")
    if server_ttft is not None and ttft.get("mean") is not None:
        parts.append(f"server mean {_ms(server_ttft)} ms (gap {ttft['mean'] - server_ttft:+.1f})")
    if v.state == "breach":
        parts.append("; ".join(v.reasons))
    if s.backing_off:
        parts.append(f"unreachable, retry in {s.next_in_s:.3g} s")
    return " | ".join(parts)


class LineView:
    """One line per cycle on stderr (logs, pipes, CI)."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream or sys.stderr

    def update(self, s: Snapshot) -> None:
        print(status_line(s), file=self._stream, flush=True)

    def message(self, text: str) -> None:
        print(f"latlab watch: {text}", file=self._stream, flush=True)

    def close(self) -> None:
        pass


class JsonView(LineView):
    """One JSON object per cycle on stdout (scripts); messages go to stderr."""

    def update(self, s: Snapshot) -> None:
        print(json.dumps(s.to_dict()), flush=True)


class RichView:
    """A live panel: client vs server figures, SLO state, errors, notes."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console(stderr=True)
        self._live = Live(console=self._console, refresh_per_second=2, transient=False)
        self._live.start()
        self._messages: list[str] = []

    def update(self, s: Snapshot) -> None:
        self._live.update(_render(s, self._messages[-4:]))

    def message(self, text: str) -> None:
        self._messages.append(f"{time.strftime('%H:%M:%S')} {text}")

    def close(self) -> None:
        self._live.stop()


def _render(s: Snapshot, messages: list[str]) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    v, key = s.verdict, f"p{s.percentile:g}"
    table = Table(box=None, pad_edge=False)
    for col in ("", "client (probe)", "server", "gap (ms)", "SLO (ms)"):
        table.add_column(col, justify="right" if col else "left")
    for metric in ("ttft", "tpot", "e2e"):
        client, server = v.client_ms.get(metric, {}), s.server.ms.get(metric, {})
        for stat in ("p50", key, "mean"):
            gap = None
            if stat == "mean" and client.get(stat) is not None and server.get(stat) is not None:
                gap = client[stat] - server[stat]
            slo = s.slo.get(metric) if stat == key else None
            table.add_row(
                f"{metric.upper()} {stat}",
                _ms(client.get(stat)),
                _ms(server.get(stat)),
                "-" if gap is None else f"{gap:+.1f}",
                "-" if slo is None else f"{slo:g}",
            )
    color = {"ok": "green", "breach": "bold red", "no_data": "yellow"}[v.state]
    head = (
        f"[{color}]{v.state.upper()}[/] {v.good} of {v.probes} probes good over the last "
        f"{s.window_s:g} s (target {s.percentile:g}%)"
    )
    lines = [head, *(f"  [red]{r}[/]" for r in v.reasons if v.state == "breach")]
    server_line = (
        f"server: {s.server.names}, {s.server.requests:.0f} requests in the window"
        if s.server.available
        else f"server: {s.server.note}"
    )
    foot = [
        server_line,
        f"cycle {s.cycle}, next in {s.next_in_s:.3g} s"
        + (" (backing off: unreachable)" if s.backing_off else ""),
        *s.notes,
        *messages,
    ]
    title = f"latlab watch {s.target}" + (f" ({s.model})" if s.model else "")
    return Panel(Group(*lines, table, *foot), title=title)
