"""Small training helpers shared by the bundled model's trainer and ``latlab distill``.

One token stream per corpus (``<bos> text <eos>`` per document), random windows from it, a
warm-up + cosine learning rate, and held-out perplexity computed the one way latlab reports it
(non-overlapping windows, exp of the mean next-token NLL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def encode_documents(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """One flat token tensor: each document as the tokenizer encodes it, then eos."""
    eos_id = tokenizer.eos_token_id
    limit = tokenizer.model_max_length
    tokenizer.model_max_length = 1 << 40  # whole documents, cut into windows later: no warning
    try:
        encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    finally:
        tokenizer.model_max_length = limit
    ids: list[int] = []
    for enc in encoded:
        ids.extend(enc)
        if eos_id is not None:
            ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def sample_batch(
    stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``seq_len`` inputs and their next-token targets."""
    starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=generator)
    rows = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def lr_at(progress: float, warmup: float, peak: float, floor: float) -> float:
    """Linear warm-up then cosine decay to ``floor``; progress runs 0..1."""
    if progress < warmup:
        return peak * progress / warmup
    frac = min(1.0, (progress - warmup) / (1.0 - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * frac))


@torch.inference_mode()
def window_perplexity(model: Any, ids: torch.Tensor, seq_len: int, max_tokens: int) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of the first max_tokens tokens."""
    ids = ids[: max_tokens + 1]
    total_nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, seq_len):
        window = ids[start : start + seq_len + 1]
        if len(window) < 2:
            break
        logits = model(input_ids=window[:-1].unsqueeze(0).to(model.device)).logits[0]
        nll = torch.nn.functional.cross_entropy(
            logits.float(), window[1:].to(logits.device), reduction="sum"
        )
        total_nll += nll.item()
        count += len(window) - 1
    if not count:
        raise ValueError("perplexity needs at least 2 tokens")
    return math.exp(total_nll / count)
