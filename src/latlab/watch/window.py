"""The SLO over the last ``--window``: which probes count, and is the objective met?

A probe is *good* when it succeeded and met every threshold (the bench's ``SLO.met_by``);
failures count as bad. The SLO holds when at least ``percentile``% of the window's probes are
good, which is "p99 TTFT <= 500 ms" with errors counted against it. With fewer than 100
probes in a window a single bad one breaches a p99 objective: that is what the data says.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from latlab.metrics import SLO, RequestRecord, percentile

_NS_PER_MS = 1e6


@dataclass(kw_only=True, slots=True)
class Verdict:
    """The window's state: 'ok', 'breach', or 'no_data' (nothing measured yet)."""

    state: str
    reasons: list[str] = field(default_factory=list)
    probes: int = 0
    failed: int = 0
    good: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    client_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def attainment(self) -> float | None:
        return self.good / self.probes if self.probes else None

    def to_dict(self) -> dict:
        return {
            "state": self.state,
            "reasons": self.reasons,
            "probes": self.probes,
            "failed": self.failed,
            "good": self.good,
            "attainment": self.attainment,
            "errors": self.errors,
            "client_ms": self.client_ms,
        }


class ProbeWindow:
    """The probes of the last ``window_s`` seconds (wall clock), evaluated against an SLO."""

    def __init__(self, window_s: float, slo: SLO | None, percentile_: float) -> None:
        self.window_s = window_s
        self.slo = slo
        self.percentile = percentile_
        self._items: deque[tuple[float, RequestRecord]] = deque()

    def add(self, records: list[RequestRecord], now: float | None = None) -> None:
        stamp = time.time() if now is None else now
        self._items.extend((stamp, r) for r in records)
        self._expire(stamp)

    def _expire(self, now: float) -> None:
        while self._items and self._items[0][0] < now - self.window_s:
            self._items.popleft()

    def records(self) -> list[RequestRecord]:
        return [r for _, r in self._items]

    def evaluate(self, now: float | None = None) -> Verdict:
        self._expire(time.time() if now is None else now)
        recs = self.records()
        if not recs:
            return Verdict(state="no_data", reasons=["no probe in the window yet"])
        ok = [r for r in recs if r.ok]
        good = sum(1 for r in ok if self.slo is None or self.slo.met_by(r))
        verdict = Verdict(
            state="ok",
            probes=len(recs),
            failed=len(recs) - len(ok),
            good=good,
            errors=dict(Counter(r.error or "unknown" for r in recs if not r.ok)),
            client_ms=_client_figures(ok, self.percentile),
        )
        verdict.reasons = self._reasons(verdict)
        if verdict.reasons:
            verdict.state = "breach"
        return verdict

    def _reasons(self, v: Verdict) -> list[str]:
        target = self.percentile / 100.0
        reasons = []
        if v.good / v.probes >= target:
            return reasons
        if v.failed:
            kinds = ", ".join(f"{k} x{n}" for k, n in sorted(v.errors.items()))
            last = next((r.error_detail for r in reversed(self.records()) if r.error_detail), "")
            reasons.append(f"{v.failed} of {v.probes} probes failed ({kinds})"
                           + (f"; last: {last}" if last else ""))  # fmt: skip
        key = f"p{self.percentile:g}"
        for name, limit in self._limits():
            got = v.client_ms.get(name, {}).get(key)
            if got is not None and got > limit:
                reasons.append(f"{name.upper()} {key} {got:.1f} ms > SLO {limit:g} ms")
        share = v.good / v.probes
        reasons.append(f"{v.good} of {v.probes} probes good ({share:.1%} < {self.percentile:g}%)")
        return reasons

    def _limits(self) -> list[tuple[str, float]]:
        if self.slo is None:
            return []
        pairs = (("ttft", self.slo.ttft_ms), ("tpot", self.slo.tpot_ms), ("e2e", self.slo.e2e_ms))
        return [(name, limit) for name, limit in pairs if limit is not None]

    def certain_breach(self, expected_probes: int) -> bool:
        """True when even all-good remaining probes could not bring the window back to target."""
        recs = self.records()
        bad = sum(1 for r in recs if not (r.ok and (self.slo is None or self.slo.met_by(r))))
        allowed = math.floor(expected_probes * (1 - self.percentile / 100.0) + 1e-9)
        return bad > allowed


def _client_figures(ok: list[RequestRecord], pct: float) -> dict[str, dict[str, float | None]]:
    """p50 / p<pct> / mean of TTFT, TPOT and E2E over the successful probes, in ms."""
    getters = {"ttft": lambda r: r.ttft_ns, "tpot": lambda r: r.tpot_ns, "e2e": lambda r: r.e2e_ns}
    out: dict[str, dict[str, float | None]] = {}
    for name, get in getters.items():
        values = sorted(v / _NS_PER_MS for r in ok if (v := get(r)) is not None)
        if not values:
            out[name] = {"p50": None, f"p{pct:g}": None, "mean": None}
            continue
        out[name] = {
            "p50": percentile(values, 50),
            f"p{pct:g}": percentile(values, pct),
            "mean": math.fsum(values) / len(values),
        }
    return out
