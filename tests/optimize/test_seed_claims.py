"""The seed's claims beside measured changes: units, inverted rows and verdicts."""

from __future__ import annotations

import pytest

from latlab.optimize.seed_claims import CLAIMS, claim_for, seed_cell, seed_column


def _delta(baseline: float, candidate: float, significant: bool = True) -> dict:
    return {"baseline": baseline, "candidate": candidate, "significant": significant}


@pytest.mark.parametrize(
    ("ttft_after", "verdict"),
    [(70.0, "within"), (90.0, "short"), (50.0, "beyond"), (100.0, "none"), (120.0, "none")],
)
def test_a_percent_claim_on_ttft(ttft_after: float, verdict: str) -> None:
    column = seed_column("prune-layers", "reject", {"ttft": _delta(100.0, ttft_after)})
    assert column is not None and column["row"] == "pruning" and column["verdict"] == verdict
    assert column["measured"] == pytest.approx(100.0 - ttft_after)


def test_a_change_inside_the_spread_is_no_gain() -> None:
    column = seed_column("distill", "reject", {"ttft": _delta(100.0, 40.0, significant=False)})
    assert column["verdict"] == "none" and column["measured_text"] == "-60%"


def test_inverted_factor_row_continuous_batching() -> None:
    # static batching (candidate) at 50 tok/s vs continuous (baseline) at 125: a 2.5x gain
    column = seed_column("static-batching", "reject", {"throughput": _delta(125.0, 50.0)})
    assert column["measured"] == pytest.approx(2.5) and column["verdict"] == "within"
    assert seed_cell(column) == "throughput 2-3x -> 2.50x: within"


def test_skipped_recipes_and_rows_without_a_claim() -> None:
    column = seed_column("int4-weight-only", "skip", {})
    assert column["verdict"] == "not measured" and seed_cell(column).endswith("not measured")
    assert seed_column("tf32", "adopt", {"ttft": _delta(1.0, 0.5)}) is None
    assert claim_for("kv-cache-bfloat16") is CLAIMS["kv-cache-dtype"]
    assert claim_for("prune-layers-2") is claim_for("prune-width") is CLAIMS["prune-layers"]
    assert claim_for("distill-2") is CLAIMS["distill"]
    assert seed_cell(None) == "-"
