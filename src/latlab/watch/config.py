"""What ``latlab watch`` does, validated before anything is sent."""

from __future__ import annotations

from dataclasses import dataclass

from latlab.errors import ConfigError
from latlab.metrics import SLO
from latlab.workload import LengthDist

# The probe must never become load: at most this many requests in flight, whatever is asked.
MAX_CONCURRENCY = 8
SERVER_METRICS_MODES = ("auto", "off")


@dataclass(kw_only=True, slots=True)
class WatchConfig:
    """One watch: the target, the request mix and pace, the SLO, and where results go."""

    url: str
    model: str | None = None
    api: str = "completions"  # completions | chat
    api_key: str | None = None
    interval_s: float = 10.0  # one cycle of requests every interval
    requests_per_cycle: int = 1
    concurrency: int = 1
    max_rate: float = 1.0  # requests per second, never exceeded (a hard pacing limit)
    prompt_tokens: str = "64"  # LengthDist spec
    max_tokens: str = "32"
    timeout_s: float = 60.0
    # SLO over the last window_s: percentile% of probes must meet every threshold.
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    slo_e2e_ms: float | None = None
    percentile: float = 99.0
    window_s: float = 300.0
    once: bool = False  # run one window, then exit 0 (SLO held) or 1 (breached)
    duration_s: float | None = None  # stop after this long (None: until Ctrl-C)
    on_breach: str | None = None  # shell command run when the SLO becomes breached
    webhook: str | None = None  # URL that gets a JSON POST on breach and on recovery
    server_metrics: str = "auto"  # auto: <server>/metrics; off; or a URL
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9464  # the watch's own /metrics; None = not served
    records_path: str | None = None  # JSONL file, one line per probe
    max_backoff_s: float = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.api not in ("completions", "chat"):
            raise ConfigError(f"--api must be completions or chat, not {self.api!r}")
        for name in ("interval_s", "window_s", "timeout_s", "max_rate", "max_backoff_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.removesuffix('_s').replace('_', '-')} must be > 0")
        if not 1 <= self.requests_per_cycle <= 64:
            raise ConfigError("--requests-per-cycle must be between 1 and 64")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigError(
                f"--concurrency must be between 1 and {MAX_CONCURRENCY}: the probe watches a "
                "server, it must not load it (use latlab bench for load)"
            )
        if not 50.0 <= self.percentile < 100.0:
            raise ConfigError(f"--slo-percentile must be in [50, 100), got {self.percentile:g}")
        for name in ("slo_ttft_ms", "slo_tpot_ms", "slo_e2e_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        self._check_rate()
        self._check_window()
        LengthDist.parse(self.prompt_tokens, "--prompt-tokens")
        LengthDist.parse(self.max_tokens, "--max-tokens")

    def _check_rate(self) -> None:
        mix_rate = self.requests_per_cycle / self.interval_s
        if mix_rate > self.max_rate:
            raise ConfigError(
                f"{self.requests_per_cycle} requests every {self.interval_s:g} s is "
                f"{mix_rate:.3g} requests/s, above --max-rate {self.max_rate:g}; raise "
                "--interval or --max-rate"
            )

    def _check_window(self) -> None:
        if self.window_s < self.interval_s:
            raise ConfigError(
                f"--window ({self.window_s:g} s) must hold at least one --interval "
                f"({self.interval_s:g} s)"
            )

    @property
    def slo(self) -> SLO | None:
        if self.slo_ttft_ms is None and self.slo_tpot_ms is None and self.slo_e2e_ms is None:
            return None
        return SLO(ttft_ms=self.slo_ttft_ms, tpot_ms=self.slo_tpot_ms, e2e_ms=self.slo_e2e_ms)

    @property
    def expected_probes(self) -> int:
        """Probes one window holds when every cycle runs on time."""
        return max(1, int(self.window_s / self.interval_s)) * self.requests_per_cycle
