"""What a token costs: an hourly device price divided by the tokens an hour produces.

The seed's last practice is to weigh what an optimization costs against what it saves. Every
figure here is a plain division, stated so a reader can redo it: ``USD per million output
tokens = price per hour / (output tokens per second x 3600) x 1e6``. The price is the user's
(``--price-per-hour``) or a list price from the device catalog (``--price-device``), which
records where each price was published and when; list prices change, so the source and date
travel with every figure computed from them.

Imports nothing beyond the standard library: ``latlab bench`` reports cost without torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from latlab.errors import ConfigError

SECONDS_PER_HOUR = 3600.0
OBJECTIVES = ("cost", "ttft", "itl", "throughput")


@dataclass(kw_only=True, slots=True, frozen=True)
class Price:
    """An hourly price and where it came from."""

    usd_per_hour: float
    source: str  # "--price-per-hour" or the catalog's publisher and page
    as_of: str | None = None  # the date its page shows (None: the user's own, or undated)
    device: str | None = None
    page: str | None = None  # where the catalog price was read

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = f"{self.device}, " if self.device else ""
        when = f", as of {self.as_of}" if self.as_of else ""
        return f"${self.usd_per_hour:g}/h ({where}{self.source}{when})"


def resolve_price(price_per_hour: float | None, device: str | None) -> Price | None:
    """The price a run is costed at: the user's figure, a catalog device's, or none."""
    if price_per_hour is not None and device is not None:
        raise ConfigError("give --price-per-hour or --price-device, not both")
    if price_per_hour is not None:
        if not math.isfinite(price_per_hour) or price_per_hour <= 0:
            raise ConfigError(
                f"--price-per-hour must be a positive number of USD, not {price_per_hour}"
            )
        return Price(usd_per_hour=price_per_hour, source="--price-per-hour")
    if device is None:
        return None
    from latlab.plan.catalog import get_device_price

    entry = get_device_price(device)
    return Price(usd_per_hour=float(entry["usd_per_hour"]), source=entry["source"],
                 as_of=entry.get("as_of"), device=entry["device"],
                 page=entry.get("page"))  # fmt: skip


def usd_per_million_tokens(price: Price, tokens_per_s: float | None) -> float | None:
    """USD per million output tokens at ``tokens_per_s``; None when nothing was produced."""
    if tokens_per_s is None or tokens_per_s <= 0 or not math.isfinite(tokens_per_s):
        return None
    return price.usd_per_hour / (tokens_per_s * SECONDS_PER_HOUR) * 1e6


def one_off_usd(price: Price, seconds: float) -> float:
    """What a one-off step (compilation, training) costs when it holds the device that long."""
    return price.usd_per_hour * max(seconds, 0.0) / SECONDS_PER_HOUR


def break_even_million_tokens(one_off: float, saved_per_million: float | None) -> float | None:
    """Million output tokens after which a one-off cost is paid back (None: never)."""
    if saved_per_million is None or saved_per_million <= 0:
        return None
    return one_off / saved_per_million


def check_objective(objective: str | None) -> str | None:
    if objective is not None and objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    return objective


def _level_cost(price: Price, summary: dict[str, Any]) -> dict[str, Any]:
    """One load level: cost at its throughput, and per SLO-meeting token when an SLO was set."""
    tokens = summary.get("output_tokens_per_s")
    out: dict[str, Any] = {"usd_per_million_output_tokens": usd_per_million_tokens(price, tokens)}
    goodput, rps = summary.get("goodput_rps"), summary.get("requests_per_s")
    if goodput is not None and rps and tokens:
        # Tokens of requests that met the SLO: the level's tokens scaled by the share that met it.
        out["usd_per_million_slo_tokens"] = usd_per_million_tokens(price, tokens * goodput / rps)
    return out


def bench_cost(document: dict[str, Any], price: Price) -> dict[str, Any]:
    """Cost figures for a ``latlab bench`` result document (levels, and ``--find``'s answer)."""
    levels = [
        {"load": lv.get("load"), **_level_cost(price, lv.get("summary") or {})}
        for lv in document.get("levels") or ()
    ]
    out: dict[str, Any] = {"price": price.to_dict(), "levels": levels}
    capacity = document.get("capacity") or {}
    bracket = capacity.get("bracket") or [None]
    probes = {p.get("value"): p for p in capacity.get("probes") or ()}
    if bracket[0] is not None and bracket[0] in probes:
        probe = probes[bracket[0]]
        out["at_slo_capacity"] = {
            capacity.get("variable", "load"): bracket[0],
            "output_tokens_per_s": probe.get("tokens_per_s"),
            "usd_per_million_output_tokens": usd_per_million_tokens(
                price, probe.get("tokens_per_s")
            ),
        }
    return out


def cost_lines(cost: dict[str, Any]) -> list[str]:
    """The cost figures as lines for the terminal."""
    price = Price(**cost["price"])

    def usd(value: float | None) -> str:
        return "-" if value is None else f"${value:,.4g}"

    lines = [f"cost at {price.describe()}, per million output tokens:"]
    for level in cost["levels"]:
        load = ", ".join(f"{k} {v:g}" for k, v in (level.get("load") or {}).items())
        slo = level.get("usd_per_million_slo_tokens")
        within = f" ({usd(slo)} counting only requests that met the SLO)" if slo else ""
        lines.append(f"  {load}: {usd(level['usd_per_million_output_tokens'])}{within}")
    at = cost.get("at_slo_capacity")
    if at:
        load = next(iter(at.items()))
        lines.append(
            f"  at the most load that meets the SLO ({load[0]} {load[1]:g}): "
            f"{usd(at['usd_per_million_output_tokens'])}"
        )
    return lines
