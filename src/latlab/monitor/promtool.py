"""``promtool check rules`` / ``test rules`` when Prometheus' promtool is installed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(kw_only=True, frozen=True, slots=True)
class PromtoolResult:
    ok: bool
    output: str


def promtool_path() -> str | None:
    return shutil.which("promtool")


def run_promtool(*args: str | Path, timeout_s: float = 60.0) -> PromtoolResult | None:
    """Run promtool with ``args``; None when promtool is not installed."""
    exe = promtool_path()
    if exe is None:
        return None
    out = subprocess.run([exe, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout_s, check=False)  # fmt: skip
    return PromtoolResult(ok=out.returncode == 0, output=(out.stdout + out.stderr).strip())


def check_rules(path: str | Path) -> PromtoolResult | None:
    return run_promtool("check", "rules", path)


def unit_test_rules(path: str | Path) -> PromtoolResult | None:
    return run_promtool("test", "rules", path)
