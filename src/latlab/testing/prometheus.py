"""A real Prometheus for tests and benchmarks: generated config, free port, stopped whole.

``with PrometheusServer(tmp, jobs={"latlab": ["127.0.0.1:8000"]}, rule_files=[...]) as prom:``
starts Debian's ``prometheus`` (a scrape and rule-evaluation interval of 1 s by default, so
alerting tests finish in a minute) through ``latlab.procs`` and yields its API client.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from latlab.monitor.promapi import PrometheusAPI
from latlab.procs import ManagedProcess, ProcessSpec, free_port, http_ok


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def write_config(path: Path, jobs: dict[str, list[str]], rule_files: list[Path],
                 interval: str = "1s") -> Path:  # fmt: skip
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in jobs.items()
        ],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class PrometheusServer:
    """One Prometheus process; ``api`` queries it; ``stop()`` (or ``with``) ends it."""

    def __init__(
        self,
        workdir: Path,
        *,
        jobs: dict[str, list[str]],
        rule_files: tuple[Path, ...] = (),
        interval: str = "1s",
    ) -> None:
        exe = prometheus_binary()
        if exe is None:
            raise RuntimeError("prometheus is not installed: bash scripts/setup_services.sh")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = write_config(workdir / "prometheus.yml", jobs, list(rule_files), interval)
        self.process = ManagedProcess(ProcessSpec(
            argv=[exe, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                  f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            name="prometheus", log_path=workdir / "prometheus.log",
        ))  # fmt: skip
        self.api = PrometheusAPI(self.url)

    def start(self, timeout_s: float = 60.0) -> PrometheusServer:
        self.process.start()
        self.process.wait_ready(lambda: http_ok(f"{self.url}/-/ready"), timeout_s=timeout_s,
                                what="ready")  # fmt: skip
        return self

    def wait_until(self, check: Any, *, timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
        """Poll ``check(api)`` until it returns something truthy; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            last = check(self.api)
            if last:
                return last
            time.sleep(poll_s)
        raise AssertionError(f"Prometheus: {what} not seen within {timeout_s:g} s (last: {last})")

    def alert_states(self, name: str) -> set[str]:
        """States ('pending', 'firing') of alert ``name`` now; empty when inactive."""
        return {a["state"] for a in self.api.alerts() if a["labels"].get("alertname") == name}

    def rule_state(self, name: str) -> str | None:
        """'inactive' | 'pending' | 'firing' of alerting rule ``name`` (from /api/v1/rules)."""
        for group in self.api.rules():
            for rule in group["rules"]:
                if rule.get("type") == "alerting" and rule.get("name") == name:
                    return rule.get("state")
        return None

    def stop(self) -> None:
        self.api.close()
        self.process.stop()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
