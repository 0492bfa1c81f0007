"""Quality against the baseline: logit divergence on held-out text and greedy-output agreement.

A latency recipe is only worth adopting if the model still says the same things. Two views:
- *Logits* (model-level recipes: quantization, dtype, attention kernels): on held-out text, the
  candidate's next-token distributions are compared with the baseline's at every position
  (KL divergence, top-1 agreement, perplexity). This catches damage long before greedy text
  changes.
- *Greedy continuations* (every recipe): the fraction of prompts whose greedy continuation is
  token-for-token identical. Exact recipes (caching, prompt lookup, batching, prefix caching)
  change how tokens are computed, never which tokens: they must match 100%.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from latlab.errors import ConfigError


@dataclass(slots=True, frozen=True)
class QualityThresholds:
    """Limits for a lossy recipe to count as "low impact" (defaults from common practice).

    ``budget`` (``--quality-budget``, e.g. ``ppl:+5%``) replaces these limits with the ones it
    names: a user who accepts the seed's "medium" quality impact says how much, knowingly.
    """

    top1_min: float | None = 0.98
    mean_kl_max: float | None = 0.01
    p99_kl_max: float | None = None
    perplexity_increase_max_pct: float | None = None
    greedy_match_min: float | None = None
    budget: str | None = None

    def describe(self) -> str:
        """The limits in words, as the decision record and each trial's quality record say."""
        limits = [
            (self.top1_min, "top-1 agreement >= {}"),
            (self.mean_kl_max, "mean KL <= {}"),
            (self.p99_kl_max, "p99 KL <= {}"),
            (self.perplexity_increase_max_pct, "perplexity <= +{}%"),
            (self.greedy_match_min, "greedy exact-match >= {}"),
        ]
        text = ", ".join(fmt.format(v) for v, fmt in limits if v is not None) or "no limit"
        return f"quality budget {self.budget} ({text})" if self.budget else text


# --quality-budget terms: name -> (QualityThresholds field, example)
_BUDGET_TERMS = {
    "ppl": ("perplexity_increase_max_pct", "ppl:+5%"),
    "top1": ("top1_min", "top1:0.95"),
    "kl": ("mean_kl_max", "kl:0.05"),
    "p99kl": ("p99_kl_max", "p99kl:0.5"),
    "greedy": ("greedy_match_min", "greedy:0.9"),
}


def parse_quality_budget(text: str) -> QualityThresholds:
    """``ppl:+5%,top1:0.95`` -> thresholds with only those limits; ConfigError otherwise."""
    examples = ", ".join(example for _, example in _BUDGET_TERMS.values())
    limits: dict[str, float] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = term.partition(":")
        field = _BUDGET_TERMS.get(name.strip().lower(), (None, ""))[0]
        number = re.fullmatch(r"\s*\+?([0-9]*\.?[0-9]+)\s*(%?)\s*", value)
        if field is None or number is None or (number.group(2) and name.strip() != "ppl"):
            raise ConfigError(
                f"--quality-budget term {term!r} is not understood; give one or more of "
                f"{examples} (comma-separated)"
            )
        amount = float(number.group(1))
        if field in ("top1_min", "greedy_match_min") and amount > 1:
            raise ConfigError(f"--quality-budget {name} is a fraction (0..1), not {amount}")
        limits[field] = amount
    if not limits:
        raise ConfigError(f"--quality-budget is empty; give one or more of {examples}")
    off = {f.name: None for f in dataclasses.fields(QualityThresholds) if f.name != "budget"}
    canonical = ",".join(t.strip() for t in text.split(",") if t.strip())
    return QualityThresholds(**{**off, **limits, "budget": canonical})


@dataclass(slots=True)
class LogitComparison:
    """Candidate vs baseline next-token distributions over the same positions."""

    positions: int
    mean_kl: float
    p99_kl: float
    top1_agreement: float
    baseline_perplexity: float
    perplexity: float

    @property
    def perplexity_change_pct(self) -> float:
        return 100.0 * (self.perplexity / self.baseline_perplexity - 1.0)


@dataclass(slots=True)
class QualityResult:
    """Every figure the gate looked at, and its verdict."""

    logits: LogitComparison | None
    greedy_match_rate: float | None
    greedy_token_agreement: float | None
    exact_required: bool
    passed: bool
    reason: str
    limits: str = ""  # the thresholds (or the --quality-budget) this verdict used

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.logits is not None:
            out["logits"]["perplexity_change_pct"] = self.logits.perplexity_change_pct
        return out


def kl_per_position(baseline_logits: torch.Tensor, candidate_logits: torch.Tensor) -> torch.Tensor:
    """KL(baseline || candidate) at each position, in nats, computed in float64."""
    if baseline_logits.shape != candidate_logits.shape:
        raise ValueError(
            f"logit shapes differ: baseline {tuple(baseline_logits.shape)} vs "
            f"candidate {tuple(candidate_logits.shape)}"
        )
    base = torch.log_softmax(baseline_logits.double().reshape(-1, baseline_logits.shape[-1]), -1)
    cand = torch.log_softmax(candidate_logits.double().reshape(-1, candidate_logits.shape[-1]), -1)
    return (base.exp() * (base - cand)).sum(-1).clamp_min(0.0)


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """exp(mean negative log-likelihood of ``targets`` under ``logits``)."""
    logp = torch.log_softmax(logits.double().reshape(-1, logits.shape[-1]), -1)
    nll = -logp.gather(1, targets.reshape(-1, 1).long()).mean()
    return float(math.exp(float(nll)))


def compare_logits(
    baseline_logits: torch.Tensor, candidate_logits: torch.Tensor, targets: torch.Tensor
) -> LogitComparison:
    """KL (mean, p99), top-1 agreement and perplexity of both, over every position."""
    kl = kl_per_position(baseline_logits, candidate_logits)
    vocab = baseline_logits.shape[-1]
    top1_base = baseline_logits.reshape(-1, vocab).argmax(-1)
    top1_cand = candidate_logits.reshape(-1, vocab).argmax(-1)
    return LogitComparison(
        positions=int(kl.numel()),
        mean_kl=float(kl.mean()),
        p99_kl=float(torch.quantile(kl, 0.99)),
        top1_agreement=float((top1_base == top1_cand).double().mean()),
        baseline_perplexity=perplexity(baseline_logits, targets),
        perplexity=perplexity(candidate_logits, targets),
    )


def greedy_agreement(
    baseline: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]
) -> tuple[float, float]:
    """(exact-match rate over prompts, mean fraction of tokens agreeing before the first miss)."""
    if len(baseline) != len(candidate) or not baseline:
        raise ValueError("greedy outputs must be non-empty lists of the same length")
    exact = 0
    prefix_fractions = []
    for base, cand in zip(baseline, candidate, strict=True):
        base, cand = list(base), list(cand)
        exact += base == cand
        same = 0
        for a, b in zip(base, cand, strict=False):
            if a != b:
                break
            same += 1
        prefix_fractions.append(same / max(len(base), 1) if base != cand else 1.0)
    return exact / len(baseline), sum(prefix_fractions) / len(prefix_fractions)


def gate(
    logits: LogitComparison | None,
    greedy_match_rate: float | None,
    greedy_token_agreement: float | None,
    exact_required: bool,
    thresholds: QualityThresholds,
) -> QualityResult:
    """Apply the thresholds; the reason names the first figure that failed, with its limit."""
    failures = _failures(
        logits, greedy_match_rate, greedy_token_agreement, exact_required, thresholds
    )
    if failures:
        reason = "; ".join(failures)
    elif exact_required:
        reason = "greedy outputs identical"
    elif logits is not None:
        reason = f"top-1 {logits.top1_agreement:.4f}, mean KL {logits.mean_kl:.2g}"
    else:
        reason = "within thresholds"
    return QualityResult(
        logits, greedy_match_rate, greedy_token_agreement, exact_required, not failures, reason,
        thresholds.describe(),
    )  # fmt: skip


def _failures(
    logits: LogitComparison | None,
    match_rate: float | None,
    token_agreement: float | None,
    exact_required: bool,
    t: QualityThresholds,
) -> list[str]:
    out: list[str] = []
    if exact_required and match_rate is not None and match_rate < 1.0:
        out.append(
            f"greedy outputs differ on {100 * (1 - match_rate):.0f}% of prompts "
            "(an exact recipe must match 100%)"
        )
    if logits is not None:
        if t.top1_min is not None and logits.top1_agreement < t.top1_min:
            out.append(f"top-1 agreement {logits.top1_agreement:.4f} < {t.top1_min}")
        if t.mean_kl_max is not None and logits.mean_kl > t.mean_kl_max:
            out.append(f"mean KL {logits.mean_kl:.3g} > {t.mean_kl_max}")
        if t.p99_kl_max is not None and logits.p99_kl > t.p99_kl_max:
            out.append(f"p99 KL {logits.p99_kl:.3g} > {t.p99_kl_max}")
        if (
            t.perplexity_increase_max_pct is not None
            and logits.perplexity_change_pct > t.perplexity_increase_max_pct
        ):
            out.append(
                f"perplexity +{logits.perplexity_change_pct:.2f}% > "
                f"+{t.perplexity_increase_max_pct}%"
            )
    elif not exact_required and token_agreement is not None:
        # No logits (e.g. an engine-side change): greedy token agreement stands in for top-1.
        # A budget that names only logit figures (ppl, kl) leaves the default limit here, so
        # a lossy engine change is never adopted unjudged.
        limit = t.top1_min
        if limit is None and t.greedy_match_min is None:
            limit = QualityThresholds().top1_min
        if limit is not None and token_agreement < limit:
            out.append(f"greedy token agreement {token_agreement:.4f} < {limit}")
    if (
        t.greedy_match_min is not None
        and match_rate is not None
        and (match_rate < t.greedy_match_min)
    ):
        out.append(f"greedy exact-match {match_rate:.3f} < {t.greedy_match_min}")
    return out


def windows(token_ids: Sequence[int], window: int, max_windows: int) -> list[list[int]]:
    """Non-overlapping windows of ``window`` inputs plus the next token (the last target).

    The in-process gate and the HTTP gate (http_quality) score the same windows.
    """
    ids = list(token_ids)
    if len(ids) < 2:
        raise ValueError("held-out text is too short: it needs at least 2 tokens")
    window = max(2, min(window, len(ids)))
    chunks = []
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window + 1]
        if len(chunk) < 2 or len(chunks) >= max_windows:
            break
        chunks.append(chunk)
    return chunks


@torch.inference_mode()
def heldout_logits(
    model: Any, token_ids: Sequence[int], window: int = 128, max_windows: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (positions, vocab) in float32 and their targets over non-overlapping windows.

    Windows are independent forward passes (no cache), so the same positions are compared
    whatever the recipe changed.
    """
    all_logits, all_targets = [], []
    for chunk in windows(token_ids, window, max_windows):
        inputs = torch.tensor([chunk[:-1]], dtype=torch.long, device=model.device)
        all_logits.append(model(input_ids=inputs).logits[0].float().cpu())
        all_targets.append(torch.tensor(chunk[1:], dtype=torch.long))
    return torch.cat(all_logits), torch.cat(all_targets)


def engine_heldout_logits(
    model_path: str,
    engine_options: dict[str, Any],
    token_ids: Sequence[int],
    window: int = 128,
    max_windows: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same windows scored by the latlab engine with these options (its own copy).

    Engine recipes that change the weights or kernels (int8 in the engine) are gated on these
    logits like model-level recipes, not only on greedy agreement.
    """
    from latlab.engine.config import EngineConfig
    from latlab.engine.llm_engine import LLMEngine

    engine = LLMEngine(EngineConfig(**{"model": model_path, **engine_options}))
    all_logits, all_targets = [], []
    for chunk in windows(token_ids, window, max_windows):
        all_logits.append(engine.runner.score(chunk[:-1]).cpu())
        all_targets.append(torch.tensor(chunk[1:], dtype=torch.long))
    return torch.cat(all_logits), torch.cat(all_targets)
