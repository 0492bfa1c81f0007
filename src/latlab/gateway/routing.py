"""Which upstream takes a request: round-robin, least-load, or prefix-aware with a load bound.

- ``round-robin``: each admitted upstream in turn.
- ``least-load``: the fewest outstanding requests, then the fewest outstanding tokens (prompt +
  max tokens), as the gateway sees them; ties go round-robin, so a burst of equal scores does not
  all land on the first upstream (llm-d-router #2515). Counts change the moment a request is
  routed, never after it.
- ``prefix``: consistent hashing of the prompt's leading block (latlab.gateway.grouping) with
  bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
  2018): a prefix goes to its home upstream on the ring unless that one already carries more than
  ``load_factor`` x the mean load, then to the next on the ring that does not. One shared system
  prompt therefore cannot pile every request onto one replica (vLLM production-stack #957), and
  a miss never goes to a busy worker because its tree is small (SGLang #14305). A prompt shorter
  than one block routes least-load.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from typing import Protocol

from latlab.errors import ConfigError
from latlab.gateway.upstreams import Upstream

POLICIES = ("round-robin", "least-load", "prefix")
VIRTUAL_NODES = 100  # ring points per upstream: spreads keys evenly with few upstreams


class Router(Protocol):
    name: str

    def choose(self, candidates: Sequence[Upstream], prefix: str | None) -> tuple[Upstream, str]:
        """The upstream for a request and how it was chosen (a label for metrics)."""


class RoundRobin:
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[Upstream], prefix: str | None) -> tuple[Upstream, str]:
        up = candidates[self._next % len(candidates)]
        self._next += 1
        return up, "round-robin"


class LeastLoad:
    name = "least-load"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[Upstream], prefix: str | None) -> tuple[Upstream, str]:
        n = len(candidates)
        self._turn += 1
        start = self._turn % n
        order = [candidates[(start + i) % n] for i in range(n)]  # ties rotate
        return min(order, key=lambda u: (u.outstanding, u.outstanding_tokens)), "least-load"


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class PrefixAware:
    """Consistent hashing of the prompt's prefix key, with bounded loads."""

    name = "prefix"

    def __init__(self, upstreams: Sequence[Upstream], *, load_factor: float = 1.25) -> None:
        if load_factor < 1.0:
            raise ConfigError(f"--load-factor must be at least 1.0, not {load_factor}")
        self.load_factor = load_factor
        ring = sorted(
            (_point(f"{up.url}#{i}"), up.url) for up in upstreams for i in range(VIRTUAL_NODES)
        )
        self._points = [p for p, _ in ring]
        self._owners = [u for _, u in ring]
        self._fallback = LeastLoad()

    def capacity(self, candidates: Sequence[Upstream]) -> int:
        """Most outstanding requests one upstream may hold, counting the new one."""
        total = sum(u.outstanding for u in candidates) + 1
        return max(1, math.ceil(self.load_factor * total / len(candidates)))

    def choose(self, candidates: Sequence[Upstream], prefix: str | None) -> tuple[Upstream, str]:
        if prefix is None:
            up, _ = self._fallback.choose(candidates, prefix)
            return up, "fallback"
        by_url = {u.url: u for u in candidates}
        cap = self.capacity(candidates)
        start = bisect.bisect(self._points, _point(prefix))
        seen: list[Upstream] = []
        for i in range(len(self._owners)):
            up = by_url.get(self._owners[(start + i) % len(self._owners)])
            if up is None or up in seen:
                continue
            if up.outstanding + 1 <= cap:
                return up, "home" if not seen else "spill"
            seen.append(up)
            if len(seen) == len(by_url):
                break
        return min(candidates, key=lambda u: u.outstanding), "spill"


def make_router(policy: str, upstreams: Sequence[Upstream], *, load_factor: float) -> Router:
    if policy == "round-robin":
        return RoundRobin()
    if policy == "least-load":
        return LeastLoad()
    if policy == "prefix":
        return PrefixAware(upstreams, load_factor=load_factor)
    raise ConfigError(f"--route {policy!r}: choose one of {', '.join(POLICIES)}")
