"""What a rule file is generated from (``latlab alerts`` fills it from its flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from latlab.monitor.names import MetricNames
from latlab.monitor.slo import BurnWindow, LatencySLO


@dataclass(kw_only=True, frozen=True, slots=True)
class RuleSpec:
    """Everything ``latlab alerts`` turns into a rule file."""

    names: MetricNames
    service: str = "latlab"  # the `service` label of every rule; one file per service
    job: str | None = None  # Prometheus job of the server (adds job="..." to every selector)
    matchers: str | None = None  # extra label matchers, e.g. 'model_name="llama"'
    latency: tuple[LatencySLO, ...] = ()
    availability: float | None = None  # share of generation requests that must not be 5xx
    windows: tuple[BurnWindow, ...] = ()
    period_s: float = 30 * 86400
    edges: dict[str, tuple[float, ...]] = field(default_factory=dict)  # role -> bucket edges
    rounding: str = "down"
    saturation_window_s: float = 300.0
    kv_usage_threshold: float = 0.9
    error_rate_threshold: float = 0.05
    watch_job: str | None = "latlab-watch"  # None: no probe alerts
    gateway_job: str | None = None  # Prometheus job of latlab gateway; None: no gateway alerts
    # The gateway logs a warning past 50 ms of event-loop lag (latlab.gateway.saturation).
    gateway_lag_s: float = 0.05
    # Default windows only: drop (with a note) a pair that a loose objective makes unfireable,
    # e.g. 14.4x a 10% budget; windows the user chose are refused instead.
    drop_unfireable: bool = False
