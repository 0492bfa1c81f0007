"""Does an SLO threshold fall on a bucket edge of the server's histogram?

A latency SLI from a classic histogram counts requests at or under one bucket edge. When the
SLO says 300 ms and the edges are 250 ms and 500 ms, the rule measures one of those instead;
generic SLO tools never notice. ``check_threshold`` picks the edge, says which one and why, and
how to make the server export the exact edge.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from latlab.errors import ConfigError
from latlab.monitor.names import MetricNames, parse_version
from latlab.serve.prometheus import ITL_BUCKETS, REQUEST_BUCKETS, TTFT_BUCKETS

ROUNDINGS = ("down", "up", "nearest")

# vLLM's default edges: before 0.9 the upper tails were shorter (vLLM #15202); the low edges,
# where SLO thresholds sit, are the same. latlab serve uses vLLM's current edges.
_VLLM_OLD = {
    "ttft": TTFT_BUCKETS[: TTFT_BUCKETS.index(10.0) + 1],
    "itl": ITL_BUCKETS[: ITL_BUCKETS.index(2.5) + 1],
    "e2e": (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0),
}
_CURRENT = {"ttft": TTFT_BUCKETS, "itl": ITL_BUCKETS, "e2e": REQUEST_BUCKETS}
# latlab serve flag / vLLM bucket family that sets each histogram's edges.
_LATLAB_FLAG = {
    "ttft": "--ttft-buckets",
    "itl": "--itl-buckets",
    "tpot": "--itl-buckets",
    "e2e": "--e2e-buckets",
}
_VLLM_FAMILY = {
    "ttft": "time_to_first_token",
    "itl": "inter_token_latency",
    "tpot": "inter_token_latency",
    "e2e": "request_latency",
}


def default_edges(names: MetricNames, role: str) -> tuple[float, ...]:
    """The edges a server of this backend/version exports for ``role`` (ttft, itl, tpot, e2e)."""
    family = "itl" if role == "tpot" else role
    if names.backend == "vllm" and parse_version(names.since) < (0, 9, 0):
        return _VLLM_OLD[family]
    return _CURRENT[family]


@dataclass(kw_only=True, frozen=True, slots=True)
class EdgeChoice:
    """The bucket edge a rule uses for one SLO threshold."""

    threshold_s: float
    edge_s: float
    exact: bool
    note: str | None  # what was rounded and how to avoid it; None when exact


def le_matcher(edge_s: float) -> str:
    """The PromQL matcher for bucket ``edge_s``, as prometheus_client writes it ('0.25', '1.0').

    Whole numbers match with and without '.0': Prometheus 3 normalises le to '1.0' while a
    server written in Go exports '1', and one rule file should work with both.
    """
    from prometheus_client.utils import floatToGoString

    text = floatToGoString(edge_s)
    if float(edge_s).is_integer():
        whole = str(int(edge_s))
        return f'le=~"{whole}|{whole}\\\\.0"'
    return f'le="{text}"'


def check_threshold(
    threshold_s: float,
    edges: tuple[float, ...],
    *,
    metric: str,
    role: str,
    backend: str,
    rounding: str = "down",
) -> EdgeChoice:
    """The edge to use for ``threshold_s``; ConfigError when no edge can stand in for it."""
    if rounding not in ROUNDINGS:
        raise ConfigError(f"--bucket-rounding must be one of {', '.join(ROUNDINGS)}")
    finite = sorted(e for e in edges if math.isfinite(e))
    if not finite:
        raise ConfigError(f"{metric} has no finite bucket edges to measure a threshold with")
    for edge in finite:
        if math.isclose(edge, threshold_s, rel_tol=1e-9, abs_tol=1e-12):
            return EdgeChoice(threshold_s=threshold_s, edge_s=edge, exact=True, note=None)
    below = [e for e in finite if e < threshold_s]
    above = [e for e in finite if e > threshold_s]
    if not above:
        raise ConfigError(
            f"{_ms(threshold_s)} is above the last bucket edge of {metric} ({_ms(finite[-1])}): "
            "requests slower than that cannot be told apart. "
            + _fix(threshold_s, finite, role, backend)
        )
    edge = _round(threshold_s, below, above, rounding)
    if edge is None:
        raise ConfigError(
            f"{_ms(threshold_s)} is below the first bucket edge of {metric} ({_ms(finite[0])}). "
            + _fix(threshold_s, finite, role, backend)
        )
    near = ", ".join(_ms(e) for e in (below[-1:] + above[:1]))
    effect = "stricter: it alerts earlier" if edge < threshold_s else "looser: it alerts later"
    note = (
        f"{role.upper()} threshold {_ms(threshold_s)} is not a bucket edge of {metric} "
        f"(nearest edges: {near}); the rules count requests over {_ms(edge)} ({effect}). "
        + _fix(threshold_s, finite, role, backend)
    )
    return EdgeChoice(threshold_s=threshold_s, edge_s=edge, exact=False, note=note)


def _round(value: float, below: list[float], above: list[float], rounding: str) -> float | None:
    if rounding == "down":
        return below[-1] if below else None
    if rounding == "up":
        return above[0]
    if not below:
        return above[0]
    return below[-1] if value - below[-1] <= above[0] - value else above[0]


def _fix(threshold_s: float, edges: list[float], role: str, backend: str) -> str:
    """How to make the server export ``threshold_s`` as an edge."""
    wanted = sorted({*edges, threshold_s})
    listed = ",".join(f"{e:g}" for e in wanted)
    if backend == "latlab":
        return f"To measure it exactly: latlab serve {_LATLAB_FLAG[role]} {listed}"
    family = json.dumps({_VLLM_FAMILY[role]: [float(f"{e:g}") for e in wanted]})
    return (
        "To measure it exactly (vLLM versions with --custom-histogram-buckets): "
        f"vllm serve ... --custom-histogram-buckets '{family}'"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


def edges_for(
    names: MetricNames, roles: tuple[str, ...], metrics_url: str | None = None
) -> tuple[dict[str, tuple[float, ...]], list[str]]:
    """Bucket edges per role: read from a live /metrics when given, else the version's defaults."""
    from latlab.monitor.scrape import fetch

    notes: list[str] = []
    scrape = fetch(metrics_url) if metrics_url else None
    edges: dict[str, tuple[float, ...]] = {}
    for role in roles:
        metric = {"ttft": names.ttft, "tpot": names.tpot or names.itl, "e2e": names.e2e}[role]
        live = scrape.edges(metric) if scrape is not None else ()
        if scrape is not None and not live:
            notes.append(f"{metrics_url} has no {metric} histogram; using default edges")
        edges[role] = live or default_edges(names, role)
    return edges, notes
