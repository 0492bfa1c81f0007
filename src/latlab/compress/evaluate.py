"""How far a compressed model is from its source, on held-out text: the figures every report
of ``latlab prune`` / ``latlab distill`` carries (the lab gates on the same ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latlab.optimize.quality import compare_logits, heldout_logits


def heldout_text_of(model_dir: str) -> str | None:
    """The model directory's heldout.txt, or None."""
    path = Path(model_dir) / "heldout.txt"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def compare_models(
    reference: Any,
    candidate: Any,
    tokenizer: Any,
    text: str,
    window: int = 128,
    windows: int = 16,
) -> dict[str, float]:
    """Perplexity of both, top-1 agreement and KL (reference || candidate) on ``text``."""
    tokenizer.model_max_length = max(len(text), 1 << 20)
    ids = tokenizer.encode(text, add_special_tokens=True)
    base_logits, targets = heldout_logits(reference, ids, window, windows)
    cand_logits, _ = heldout_logits(candidate, ids, window, windows)
    c = compare_logits(base_logits, cand_logits, targets)
    return {
        "positions": c.positions,
        "reference_perplexity": round(c.baseline_perplexity, 4),
        "perplexity": round(c.perplexity, 4),
        "perplexity_change_pct": round(c.perplexity_change_pct, 3),
        "top1_agreement": round(c.top1_agreement, 4),
        "mean_kl": round(c.mean_kl, 6),
    }
