"""The lab's workload: prompts cut from held-out text, with shared prefixes and repeats.

Every configuration sees the same requests in the same order. Two properties are built in on
purpose, because request-level recipes only show their effect when the traffic has them, and
real traffic often does: prompts share a few prefixes (a system prompt, a document), and some
requests repeat exactly. Both are plan settings and appear in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from latlab.errors import ConfigError


@dataclass(slots=True, frozen=True)
class LabWorkload:
    """Shape of the workload; the defaults finish quickly on the bundled model."""

    num_requests: int = 8
    prompt_len: int = 48
    output_len: int = 32
    shared_prefix_len: int = 24
    num_prefixes: int = 2
    repeat_fraction: float = 0.25
    concurrency: int = 4  # engine backend: requests in flight at once

    def __post_init__(self) -> None:
        for name in ("num_requests", "prompt_len", "output_len", "num_prefixes", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"workload.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.shared_prefix_len < self.prompt_len:
            raise ConfigError(
                f"workload.shared_prefix_len must be in [0, prompt_len={self.prompt_len}), "
                f"got {self.shared_prefix_len}"
            )
        if not 0.0 <= self.repeat_fraction < 1.0:
            raise ConfigError(
                f"workload.repeat_fraction must be in [0, 1), got {self.repeat_fraction}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class LabRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    prefix_id: int


def build_requests(token_ids: Sequence[int], workload: LabWorkload) -> list[LabRequest]:
    """Requests over ``token_ids`` (wrapping around a short text); repeats go last."""
    ids = list(token_ids)
    if len(ids) < 2:
        raise ConfigError("the held-out text is too short to build prompts (under 2 tokens)")
    cursor = 0

    def take(n: int) -> tuple[int, ...]:
        nonlocal cursor
        out = [ids[(cursor + i) % len(ids)] for i in range(n)]
        cursor += n
        return tuple(out)

    prefixes = [take(workload.shared_prefix_len) for _ in range(workload.num_prefixes)]
    repeats = round(workload.num_requests * workload.repeat_fraction)
    distinct = workload.num_requests - repeats
    suffix_len = workload.prompt_len - workload.shared_prefix_len
    requests = [
        LabRequest(
            f"r{i}",
            prefixes[i % workload.num_prefixes] + take(suffix_len),
            i % workload.num_prefixes,
        )
        for i in range(distinct)
    ]
    for j in range(repeats):
        original = requests[j % distinct]
        requests.append(LabRequest(f"r{distinct + j}", original.prompt_ids, original.prefix_id))
    return requests
