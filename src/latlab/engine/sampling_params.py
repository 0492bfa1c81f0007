"""SamplingParams: how one request picks its tokens and when it stops (same names as vLLM)."""

from __future__ import annotations

from dataclasses import dataclass

from latlab.errors import ConfigError

# Beyond this, max_tokens is certainly a mistake (no supported model has such a context).
MAX_TOKENS_LIMIT = 1 << 20


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding settings; invalid values raise ConfigError naming the field.

    ``temperature=0`` is greedy. ``top_k=0`` (or -1) and ``top_p=1`` switch those filters off.
    ``stop`` strings are trimmed from the output text; ``stop_token_ids`` end the request like
    EOS does. ``ignore_eos`` keeps generating past EOS (benchmarks); ``min_tokens`` forbids EOS
    and stop tokens until that many tokens exist.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 128
    min_tokens: int = 0
    ignore_eos: bool = False
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None

    def __post_init__(self) -> None:
        _number("temperature", self.temperature)
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}")
        _number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        _integer("top_k", self.top_k)
        if self.top_k == -1:
            self.top_k = 0
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 or -1 disables it), got {self.top_k!r}")
        _integer("max_tokens", self.max_tokens)
        if not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise ConfigError(
                f"max_tokens must be in [1, {MAX_TOKENS_LIMIT}], got {self.max_tokens!r}"
            )
        _integer("min_tokens", self.min_tokens)
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ConfigError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens!r}"
            )
        if not isinstance(self.ignore_eos, bool):
            raise ConfigError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        if self.seed is not None:
            _integer("seed", self.seed)
        self.stop = _stop_strings(self.stop)
        self.stop_token_ids = _stop_ids(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")


def _integer(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")


def _stop_strings(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise ConfigError(f"stop must be a string or a list of strings, got {stop!r}")
    if any(s == "" for s in stop):
        raise ConfigError("stop strings must not be empty")
    return list(stop)


def _stop_ids(ids: object) -> list[int]:
    if ids is None:
        return []
    if not isinstance(ids, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
    ):
        raise ConfigError(f"stop_token_ids must be a list of non-negative integers, got {ids!r}")
    return list(ids)
