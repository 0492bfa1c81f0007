"""Flags that put a price on measured throughput (``latlab bench``, ``latlab optimize``)."""

from __future__ import annotations

from typing import Any

import click


def price_options(func: Any) -> Any:
    """--price-per-hour and --price-device, shared by optimize and bench."""
    func = click.option(
        "--price-device",
        default=None,
        help="Cost figures at this catalog device's list price per hour (source and date "
        "recorded), e.g. H100-80GB.",
    )(func)
    return click.option(
        "--price-per-hour",
        type=float,
        default=None,
        help="USD per hour of the machine measured: adds USD per million output tokens.",
    )(func)
