"""Where every probe is kept: one JSON line per probe (the run store takes over when it lands)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO

from latlab.errors import ConfigError
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
