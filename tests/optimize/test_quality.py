import math

import pytest
import torch

from latlab.optimize.quality import (
    LogitComparison,
    QualityThresholds,
    compare_logits,
    gate,
    greedy_agreement,
    kl_per_position,
    perplexity,
)


def test_kl_by_hand():
    # baseline (0.5, 0.5), candidate (0.75, 0.25): KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)
    base = torch.tensor([[0.0, 0.0]])
    cand = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kl_per_position(base, cand).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.5 * math.log(4 / 3))
    assert kl_per_position(base, base).item() == 0.0


def test_perplexity_by_hand():
    # Uniform over 4 tokens: perplexity 4 whatever the targets.
    assert perplexity(torch.zeros(3, 4), torch.tensor([0, 1, 3])) == pytest.approx(4.0)
    # p(target) = 0.5 at both positions -> perplexity 2.
    logits = torch.tensor([[0.0, 0.0, -1e9], [-1e9, 0.0, 0.0]])
    assert perplexity(logits, torch.tensor([1, 2])) == pytest.approx(2.0)


def test_compare_logits_top1_and_p99():
    base = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    cand = base.clone()
    cand[3] = torch.tensor([2.0, 0.0])  # one of four positions flips its argmax
    result = compare_logits(base, cand, torch.tensor([0, 1, 0, 1]))
    assert result.positions == 4
    assert result.top1_agreement == 0.75
    flipped_kl = kl_per_position(base[3:], cand[3:]).item()
    assert result.mean_kl == pytest.approx(flipped_kl / 4)
    # p99 over [0, 0, 0, k] interpolates 97% of the way from 0 to k.
    assert result.p99_kl == pytest.approx(0.97 * flipped_kl)
    assert result.perplexity > result.baseline_perplexity


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        kl_per_position(torch.zeros(2, 3), torch.zeros(2, 4))


def test_greedy_agreement():
    base = [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert greedy_agreement(base, base) == (1.0, 1.0)
    rate, tokens = greedy_agreement(base, [[1, 2, 3, 4], [5, 6, 0, 0]])
    assert rate == 0.5
    assert tokens == pytest.approx((1.0 + 0.5) / 2)


def _logits(top1: float, kl: float) -> LogitComparison:
    return LogitComparison(100, kl, kl * 3, top1, 10.0, 10.1)


def test_gate_thresholds():
    t = QualityThresholds()
    assert gate(_logits(0.99, 0.001), 1.0, 1.0, False, t).passed
    low_top1 = gate(_logits(0.97, 0.001), 1.0, 1.0, False, t)
    assert not low_top1.passed and "top-1 agreement 0.9700 < 0.98" in low_top1.reason
    high_kl = gate(_logits(0.99, 0.05), 1.0, 1.0, False, t)
    assert not high_kl.passed and "mean KL" in high_kl.reason
    strict = QualityThresholds(p99_kl_max=0.001, perplexity_increase_max_pct=0.5)
    result = gate(_logits(0.99, 0.001), 1.0, 1.0, False, strict)
    assert not result.passed and "p99 KL" in result.reason and "perplexity" in result.reason


def test_exact_recipe_needs_identical_outputs():
    t = QualityThresholds()
    assert gate(None, 1.0, 1.0, True, t).reason == "greedy outputs identical"
    result = gate(None, 0.75, 0.9, True, t)
    assert not result.passed and "25% of prompts" in result.reason


def test_lossy_without_logits_uses_greedy_token_agreement():
    assert not gate(None, 0.5, 0.9, False, QualityThresholds()).passed
    assert gate(None, 1.0, 1.0, False, QualityThresholds()).passed


def test_a_quality_budget_replaces_the_default_gate():
    from latlab.errors import ConfigError
    from latlab.optimize.quality import parse_quality_budget

    budget = parse_quality_budget("ppl:+5%, top1:0.9")
    assert (budget.perplexity_increase_max_pct, budget.top1_min) == (5.0, 0.9)
    assert budget.mean_kl_max is None and budget.budget == "ppl:+5%,top1:0.9"
    # top-1 0.93 and KL 0.2 fail the default gate but fit a budget of +5% perplexity
    medium = LogitComparison(100, 0.2, 0.6, 0.93, 10.0, 10.3)
    assert not gate(medium, 1.0, 1.0, False, QualityThresholds()).passed
    result = gate(medium, 1.0, 1.0, False, budget)
    assert result.passed and result.limits.startswith("quality budget ppl:+5%,top1:0.9")
    worse = LogitComparison(100, 0.2, 0.6, 0.93, 10.0, 11.0)
    assert "perplexity +10.00% > +5.0%" in gate(worse, 1.0, 1.0, False, budget).reason
    # an exact recipe still has to keep every greedy output, and a lossy one without logits
    # (an engine change) keeps the default token-agreement limit under a ppl-only budget
    assert not gate(None, 0.5, 0.9, True, budget).passed
    assert (
        "greedy token agreement 0.9500 < 0.98"
        in gate(None, 0.5, 0.95, False, parse_quality_budget("ppl:+5%")).reason
    )
    for bad in ("ppl:5x", "speed:2", "top1:3", "", "kl:0.1%"):
        with pytest.raises(ConfigError, match="--quality-budget"):
            parse_quality_budget(bad)
