"""Cost per million output tokens: the division, the price's provenance, every bad price."""

from __future__ import annotations

import pytest

from latlab.cost import (
    Price,
    bench_cost,
    break_even_million_tokens,
    cost_lines,
    one_off_usd,
    resolve_price,
    usd_per_million_tokens,
)
from latlab.errors import ConfigError


def test_the_division_a_reader_can_redo() -> None:
    price = Price(usd_per_hour=3.6, source="--price-per-hour")
    # 3.6 USD/h at 1000 tok/s = 3.6M tokens per hour -> 1 USD per million
    assert usd_per_million_tokens(price, 1000.0) == pytest.approx(1.0)
    assert usd_per_million_tokens(price, 0.0) is None
    assert one_off_usd(price, 600) == pytest.approx(0.6)
    assert break_even_million_tokens(0.6, 0.2) == pytest.approx(3.0)
    assert break_even_million_tokens(0.6, -0.1) is None  # no saving: never paid back


def test_catalog_prices_carry_source_and_date() -> None:
    price = resolve_price(None, "h100-80gb")
    assert price is not None and price.device == "H100-80GB" and price.usd_per_hour > 0
    assert "AWS" in price.source and price.as_of and price.page.startswith("https://")
    assert "H100-80GB" in price.describe() and "as of" in price.describe()
    undated = resolve_price(None, "L4-24GB")  # its page shows no date: none is invented
    assert undated.as_of is None and "as of" not in undated.describe() and undated.page


@pytest.mark.parametrize(
    ("per_hour", "device", "message"),
    [
        (-1.0, None, "positive number"),
        (float("nan"), None, "positive number"),
        (2.0, "L4-24GB", "not both"),
        (None, "H300", "unknown device"),
        (None, "RTX4090-24GB", "no list price"),
    ],
)
def test_bad_prices_are_refused(per_hour, device, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_price(per_hour, device)


def test_bench_cost_per_level_slo_share_and_capacity_answer() -> None:
    document = {
        "levels": [
            {"load": {"concurrency": 1}, "summary": {"output_tokens_per_s": 100.0,
             "requests_per_s": 2.0, "goodput_rps": 1.0}},
            {"load": {"concurrency": 4}, "summary": {"output_tokens_per_s": 0.0}},
        ],
        "capacity": {"variable": "concurrency", "bracket": [2, 4],
                     "probes": [{"value": 2, "tokens_per_s": 360.0}]},
    }  # fmt: skip
    cost = bench_cost(document, Price(usd_per_hour=0.36, source="--price-per-hour"))
    first, second = cost["levels"]
    assert first["usd_per_million_output_tokens"] == pytest.approx(1.0)
    assert first["usd_per_million_slo_tokens"] == pytest.approx(2.0)  # half met the SLO
    assert second["usd_per_million_output_tokens"] is None
    assert cost["at_slo_capacity"]["usd_per_million_output_tokens"] == pytest.approx(0.2777777)
    text = "\n".join(cost_lines(cost))
    assert "concurrency 1: $1" in text and "meets the SLO (concurrency 2)" in text
