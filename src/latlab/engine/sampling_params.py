"""SamplingParams: how one request picks its tokens and when it stops (same names as vLLM)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from latlab.engine.stop_strings import StopStrings
from latlab.errors import ConfigError

# Beyond this, max_tokens is certainly a mistake (no supported model has such a context).
MAX_TOKENS_LIMIT = 1 << 20
# A temperature below this is greedy, its limit (as vLLM's _SAMPLING_EPS): dividing logits by
# 1e-40 overflows to inf and the softmax to NaN, which drew token 0 every time.
GREEDY_BELOW = 1e-5
# What torch.Generator.manual_seed accepts: a signed or unsigned 64-bit integer.
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)
# OpenAI's and vLLM's ranges.
PENALTY_RANGE = (-2.0, 2.0)
LOGIT_BIAS_RANGE = (-100.0, 100.0)
# Most alternatives returned per position (vLLM's default --max-logprobs).
MAX_LOGPROBS = 20


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding settings; invalid values raise ConfigError naming the field.

    ``temperature=0`` is greedy (so is anything below 1e-5, which is set to 0). ``top_k=0``
    (or -1) and ``top_p=1`` switch those filters off. ``stop`` strings are trimmed from the
    output text; ``stop_token_ids`` end the request like EOS does. ``ignore_eos`` keeps
    generating past EOS (benchmarks); ``min_tokens`` forbids EOS and stop tokens until that
    many tokens exist.

    Logits are adjusted before greedy or random picking, with vLLM's semantics: ``logit_bias``
    (token id -> value in [-100, 100]) is added; ``repetition_penalty`` (> 0, 1 = off)
    divides positive and multiplies negative logits of every token already in the prompt or
    the output; ``frequency_penalty`` and ``presence_penalty`` (in [-2, 2]) subtract, per
    token, its count in the output and 1 if it occurs there at all.

    ``logprobs=N`` returns each generated token's log-probability and the N most likely
    alternatives; ``prompt_logprobs=N`` the same for every prompt token after the first (as
    vLLM: from the model's raw distribution, before temperature, biases or any filter).
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
    logit_bias: dict[int, float] | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    # Derived once here, so neither the engine thread nor each step pays for them again.
    stop_strings: StopStrings | None = field(default=None, init=False, repr=False, compare=False)
    stop_token_set: frozenset[int] = field(
        default=frozenset(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        _number("temperature", self.temperature)
        if not 0 <= self.temperature < math.inf:
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.temperature < GREEDY_BELOW:
            self.temperature = 0.0
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
            if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
                raise ConfigError(f"seed must fit in 64 bits, got {self.seed!r}")
        self._check_logprob_counts()
        self.stop = _stop_strings(self.stop)
        self.stop_token_ids = _stop_ids(self.stop_token_ids)
        self.stop_strings = StopStrings(self.stop) if self.stop else None
        self.stop_token_set = frozenset(self.stop_token_ids)
        self._check_logit_adjustments()

    def _check_logprob_counts(self) -> None:
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _integer(name, value)
                if not 0 <= value <= MAX_LOGPROBS:
                    raise ConfigError(f"{name} must be in [0, {MAX_LOGPROBS}], got {value!r}")

    def _check_logit_adjustments(self) -> None:
        _number("repetition_penalty", self.repetition_penalty)
        if not 0 < self.repetition_penalty < math.inf:
            raise ConfigError(
                f"repetition_penalty must be a finite number > 0 (1 = off), "
                f"got {self.repetition_penalty!r}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            _number(name, getattr(self, name))
            _in_range(name, getattr(self, name), PENALTY_RANGE)
        self.logit_bias = _logit_bias(self.logit_bias)

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def adjusts_logits(self) -> bool:
        """Whether logits change before picking (then no speculative drafts are made)."""
        return bool(self.logit_bias) or self.has_penalties

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


def _in_range(name: str, value: float, bounds: tuple[float, float]) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise ConfigError(f"{name} must be in [{bounds[0]:g}, {bounds[1]:g}], got {value!r}")


def _logit_bias(bias: object) -> dict[int, float] | None:
    """Token id -> bias; OpenAI clients send the ids as strings ("50256"), accepted too."""
    if not bias:
        return None
    if not isinstance(bias, dict):
        raise ConfigError(f"logit_bias must map token ids to numbers, got {bias!r}")
    out: dict[int, float] = {}
    for key, value in bias.items():
        token = _token_id(key)
        _number(f"logit_bias[{key!r}]", value)
        _in_range(f"logit_bias[{key!r}]", value, LOGIT_BIAS_RANGE)
        out[token] = float(value)
    return out


def _token_id(key: object) -> int:
    if isinstance(key, str) and key.isascii() and key.isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
        raise ConfigError(f"logit_bias keys must be token ids (integers >= 0), got {key!r}")
    return key
