"""Where every probe is kept: a JSONL file (``--records``) and/or the run store (one run per
watch, one level per window of probes)."""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from latlab.errors import ConfigError, RunStoreError
from latlab.metrics import RequestRecord


class JsonlSink:
    """Appends ``{"time", "target", "model", "cycle", **record}`` lines, flushed per cycle."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[str] | None = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write --records {path} ({exc.strerror})") from None

    def write(
        self, records: list[RequestRecord], *, cycle: int, target: str, model: str | None
    ) -> None:
        if self._fh is None:
            return
        stamp = time.time()
        for rec in records:
            line = {
                "time": stamp,
                "target": target,
                "model": model,
                "cycle": cycle,
                **rec.to_dict(),
            }
            self._fh.write(json.dumps(line) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def watch_document(config: Any) -> dict[str, Any]:
    """The run-store document of a watch before its first window: what it watches, how, where."""
    from latlab import __version__
    from latlab.environment import environment

    settings = ("api", "interval_s", "requests_per_cycle", "concurrency", "max_rate",
                "prompt_tokens", "max_tokens", "slo_ttft_ms", "slo_tpot_ms", "slo_e2e_ms",
                "percentile", "window_s", "once")  # fmt: skip
    return {
        "kind": "latlab.watch",
        "latlab_version": __version__,
        "created_utc": _utc(time.time()),
        "target": {"name": f"{config.url} ({config.api})", "url": config.url},
        "config": {key: getattr(config, key) for key in settings},
        "environment": environment(),
        "headline": "started",
        "levels": [],
    }


def _utc(stamp: float) -> str:
    return _dt.datetime.fromtimestamp(stamp, _dt.timezone.utc).isoformat(timespec="seconds")


class StoreSink:
    """Keeps a watch in the run store: the run is created when the watch starts (``latlab runs``
    lists it at once) and every ``flush_s`` (the SLO window) the probes since the last flush are
    appended as one level with the window's verdict, so a watch killed without warning loses at
    most one window. A store that fails mid-watch is reported once and dropped: the probe goes
    on (its JSONL file and /metrics are unaffected)."""

    def __init__(
        self,
        store: Any,
        *,
        document: dict[str, Any],
        flush_s: float,
        name: str | None = None,
        tags: Sequence[str] = (),
        command: Sequence[str] | None = None,
    ) -> None:
        self.store = store
        self.flush_s = flush_s
        self.run_id: int | None = store.add_run(
            kind="watch", result=document, name=name, tags=tags, command=command
        )
        self.error: str | None = None
        self._pending: list[dict[str, Any]] = []
        self._since = time.time()
        self._totals = {"probes": 0, "failed": 0, "windows": 0, "breached": 0}

    def add(self, records: list[RequestRecord], *, cycle: int, verdict: Any) -> None:
        """The cycle's probes; a level is written once ``flush_s`` has passed."""
        stamp = time.time()
        self._pending += [{"time": stamp, "cycle": cycle, **r.to_dict()} for r in records]
        if stamp - self._since >= self.flush_s:
            self.flush(verdict, now=stamp)

    def flush(self, verdict: Any, *, now: float | None = None) -> None:
        if self.run_id is None or not self._pending:
            return
        end = time.time() if now is None else now
        records, self._pending = self._pending, []
        failed = sum(1 for r in records if not r.get("ok", True))
        t = self._totals
        t["probes"] += len(records)
        t["failed"] += failed
        t["windows"] += 1
        t["breached"] += verdict.state == "breach"
        level = {
            "label": f"window {t['windows']}",
            "started_utc": _utc(self._since),
            "ended_utc": _utc(end),
            "probes": len(records),
            "failed": failed,
            "verdict": verdict.to_dict(),
            "records": records,
        }
        self._since = end
        headline = (
            f"{t['windows']} windows, {t['probes']} probes"
            + (f", {t['failed']} failed" if t["failed"] else "")
            + f" · SLO breached in {t['breached']} of {t['windows']} windows"
            + f" · last: {verdict.state}"
        )
        try:
            self.store.append_level(self.run_id, level, headline=headline)
        except RunStoreError as exc:
            self.error = f"run store: {exc}; probes are no longer recorded there"
            self.run_id = None

    def close(self, verdict: Any) -> None:
        self.flush(verdict)
        self.store.close()
