"""The quality gate over HTTP, for any OpenAI-compatible server that returns log-probabilities.

In-process, the lab compares full next-token distributions (quality.py). A server only returns
the top few log-probabilities per position, so over HTTP the same figures are computed from
what it returns (vLLM's ``prompt_logprobs``; ``latlab serve`` returns them the same way):

- **perplexity**: exact. Each held-out token's own log-probability is returned whatever its
  rank, so exp(mean negative log-likelihood) is the full-distribution figure.
- **top-1 agreement**: exact. The most likely token is always among the returned ones.
- **KL(baseline || candidate)**: an estimate. Both distributions are coarsened to the
  baseline's ``kl_top_k`` most likely tokens plus one bucket for everything else, and the KL
  of those coarse distributions is computed. Coarsening never increases KL, so this is a lower
  bound of the true KL when the candidate's probability of each of those tokens is known; it
  misses differences *inside* the tail (mass moving between unlisted tokens). The candidate
  returns its top ``returned`` tokens (default 20); a baseline top-k token missing from them is
  given the candidate's smallest returned probability (an over-estimate of its probability,
  so such positions can only understate the KL); how many positions needed this is reported.
- **greedy exact match**: the workload's greedy completions compared as texts (and as tokens,
  re-tokenized with the model's tokenizer, for the token-agreement figure).

Windows are the in-process gate's: non-overlapping runs of ``window`` + 1 held-out tokens, sent
as token ids (no BOS added), each position scored given the tokens before it in its window, so
HTTP and in-process figures are over the same positions (tests check that they agree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from latlab.errors import TargetError
from latlab.optimize.quality import LogitComparison

RETURNED = 20  # alternatives asked per position (vLLM's default --max-logprobs)
KL_TOP_K = 5


@dataclass(kw_only=True, slots=True)
class ScoredText:
    """One server's scores of held-out windows, position by position."""

    token_logprobs: list[float] = field(default_factory=list)  # the actual next token's
    top: list[dict[int, float]] = field(default_factory=list)  # token id -> logprob, best first

    @property
    def positions(self) -> int:
        return len(self.token_logprobs)

    @property
    def perplexity(self) -> float:
        return math.exp(-sum(self.token_logprobs) / max(1, self.positions))


def score_windows(
    client: httpx.Client,
    base_url: str,
    model: str,
    chunks: Sequence[Sequence[int]],
    returned: int = RETURNED,
) -> ScoredText:
    """Ask the server for its prompt log-probabilities of each window (vLLM's extension)."""
    scored = ScoredText()
    for chunk in chunks:
        body = {"model": model, "prompt": list(chunk), "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": returned}  # fmt: skip
        response = client.post(base_url.rstrip("/") + "/completions", json=body)
        if response.status_code != 200:
            raise TargetError(
                f"{base_url} refused prompt_logprobs (HTTP {response.status_code}: "
                f"{response.text[:200]}); the HTTP quality gate needs a server that returns "
                "them (vLLM, latlab serve)"
            )
        positions = response.json()["choices"][0].get("prompt_logprobs")
        if not positions or len(positions) != len(chunk):
            raise TargetError(f"{base_url} returned no prompt_logprobs for a {len(chunk)}-token "
                              "prompt; the HTTP quality gate needs them")  # fmt: skip
        for token, entry in zip(chunk[1:], positions[1:], strict=True):
            top = {int(t): float(v["logprob"]) for t, v in entry.items()}
            scored.token_logprobs.append(top[int(token)])
            scored.top.append(dict(sorted(top.items(), key=lambda kv: -kv[1])))
    return scored


def coarse_kl(base: dict[int, float], cand: dict[int, float], top_k: int) -> tuple[float, bool]:
    """KL over the baseline's ``top_k`` tokens + a rest bucket; True when estimated (see top)."""
    support = list(base)[:top_k]
    floor = math.exp(min(cand.values())) if cand else 0.0
    p = [math.exp(base[t]) for t in support]
    q = [math.exp(cand[t]) if t in cand else floor for t in support]
    estimated = any(t not in cand for t in support)
    kl = sum(pi * (math.log(pi) - math.log(max(qi, 1e-30))) for pi, qi in zip(p, q, strict=True))
    rest_p, rest_q = 1.0 - sum(p), max(1.0 - sum(q), 1e-30)
    if rest_p > 1e-12:
        kl += rest_p * (math.log(rest_p) - math.log(rest_q))
    return max(kl, 0.0), estimated


def compare_scores(
    base: ScoredText, cand: ScoredText, kl_top_k: int = KL_TOP_K
) -> tuple[LogitComparison, int]:
    """The gate's figures from two servers' scores; also how many KLs used the floor."""
    if base.positions != cand.positions or not base.positions:
        raise ValueError("both servers must score the same, non-empty, positions")
    kls, estimated = [], 0
    agree = 0
    for b, c in zip(base.top, cand.top, strict=True):
        kl, floor_used = coarse_kl(b, c, kl_top_k)
        kls.append(kl)
        estimated += floor_used
        agree += next(iter(b)) == next(iter(c))
    ordered = sorted(kls)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    comparison = LogitComparison(
        positions=base.positions, mean_kl=sum(kls) / len(kls), p99_kl=p99,
        top1_agreement=agree / base.positions, baseline_perplexity=base.perplexity,
        perplexity=cand.perplexity,
    )  # fmt: skip
    return comparison, estimated


def greedy_texts(
    client: httpx.Client,
    base_url: str,
    model: str,
    prompts: Sequence[Sequence[int]],
    max_tokens: int,
) -> list[str]:
    """Greedy completions of token-id prompts (ignore_eos: a fixed length, as the lab runs)."""
    texts = []
    for prompt in prompts:
        body = {"model": model, "prompt": list(prompt), "max_tokens": max_tokens,
                "temperature": 0.0, "ignore_eos": True}  # fmt: skip
        response = client.post(base_url.rstrip("/") + "/completions", json=body)
        if response.status_code != 200:
            raise TargetError(f"{base_url} refused a greedy request (HTTP "
                              f"{response.status_code}: {response.text[:200]})")  # fmt: skip
        texts.append(response.json()["choices"][0]["text"])
    return texts


def http_client(timeout_s: float = 300.0, api_key: str | None = None) -> httpx.Client:
    headers: dict[str, Any] = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(timeout=timeout_s, trust_env=False, headers=headers)
