"""BenchConfig: one benchmark run's settings, and the one place their defaults live.

The defaults depend on where the target runs: an HTTP server gets a serving benchmark's shape
(100 requests of 128 tokens in, 128 out), an in-process model (the no-argument demo) a short
run that shows how batching changes latency. ``BenchConfig.from_options`` applies them; the
CLI passes what the user typed and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from latlab.errors import ConfigError
from latlab.metrics import SLO
from latlab.prompt_words import Salt
from latlab.workload import LengthDist


@dataclass(kw_only=True, frozen=True, slots=True)
class RunSettings:
    """How every level of one run is driven: the same in the parent and in each worker."""

    num_requests: int | None = 100  # per level (None: until duration_s)
    duration_s: float | None = None  # per level; with num_requests, whichever ends first
    slo: SLO | None = None
    burstiness: float = 1.0  # gamma shape of open-loop gaps: 1 = Poisson
    seed: int = 0
    drain_s: float = 5.0  # after a stop request, how long in-flight requests may finish
    salt: Salt | None = None  # per-request tags at the front of each prompt (None: off)


# What differs from the field defaults (the HTTP shape) for an in-process target.
IN_PROCESS_DEFAULTS: dict[str, Any] = {
    "num_requests": 16,
    "input_len": "32",
    "output_len": "32",
    "concurrency": [1, 4],  # the demo shows how batching changes latency
}


@dataclass(kw_only=True, slots=True)
class BenchConfig:
    """One benchmark run: load levels, request budget, workload, generation settings."""

    concurrency: list[int] | None = None  # closed loop, one level each (default [1])
    rate: list[float] | None = None  # open loop requests/s, one level each (inf = all at once)
    burstiness: float = 1.0  # gamma shape of open-loop gaps: 1 = Poisson, < 1 burstier
    num_requests: int | None = 100  # per level
    duration_s: float | None = None  # per level; with num_requests, whichever ends first
    warmup: int = 2  # requests sent before the first level and excluded from every figure
    input_len: str = "128"  # N | uniform:LO:HI | normal:MEAN:STD (tokens)
    output_len: str = "128"
    dataset: str = "synthetic"  # synthetic | jsonl:FILE | sharegpt:FILE | shared-prefix
    prefix_groups: int = 4
    prefix_len: int = 256
    api: str = "completions"
    stream: bool = True
    seed: int = 0
    slo: SLO | None = None
    ignore_eos: bool = True
    min_tokens: int | None = None
    temperature: float = 0.0
    drain_s: float = 5.0  # after Ctrl-C, how long in-flight requests may finish
    workers: int = 1  # client processes sharing each level (HTTP targets only)
    # Per-run value behind the tag at the front of every prompt (see latlab.prompt_words):
    # None picks a random one (recorded in the result), "" sends prompts unsalted.
    salt: str | None = None
    # Each level measured this many times, interleaved (1,4,1,4...) so drift hits all alike.
    repeats: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the JSON as given

    def __post_init__(self) -> None:
        if self.concurrency and self.rate:
            raise ConfigError("give --concurrency (closed loop) or --rate (open loop), not both")
        if not self.concurrency and not self.rate:
            self.concurrency = [1]
        if any(c < 1 for c in self.concurrency or ()):
            raise ConfigError("--concurrency values must be >= 1")
        if any(not r > 0 for r in self.rate or ()):
            raise ConfigError("--rate values must be > 0 (inf sends everything at once)")
        if self.num_requests is None and self.duration_s is None:
            raise ConfigError("give --num-requests or --duration")
        if self.num_requests is not None and self.num_requests < 1:
            raise ConfigError("--num-requests must be >= 1")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ConfigError("--duration must be > 0 seconds")
        if self.warmup < 0:
            raise ConfigError("--warmup must be >= 0")
        if self.workers < 1:
            raise ConfigError("--workers must be >= 1")
        streamed_slo = self.slo is not None and (self.slo.ttft_ms, self.slo.tpot_ms) != (None, None)
        if not self.stream and streamed_slo:
            raise ConfigError(
                "--no-stream measures no TTFT or TPOT (the first token arrives with the last): "
                "use --slo-e2e-ms, or stream"
            )
        if self.repeats < 1:
            raise ConfigError("--repeats must be >= 1")
        if any(math.isinf(r) for r in self.rate or ()) and self.num_requests is None:
            raise ConfigError("--rate inf sends everything at once: give --num-requests")
        LengthDist.parse(self.input_len, "--input-len")
        LengthDist.parse(self.output_len, "--output-len")

    def levels(self) -> list[dict[str, Any]]:
        """Every level to run, in order; with repeats, ``{"concurrency": 4, "repeat": 1}``."""
        if self.rate:
            loads: list[dict[str, Any]] = [{"rate": r} for r in self.rate]
        else:
            loads = [{"concurrency": c} for c in self.concurrency or [1]]
        if self.repeats == 1:
            return loads
        return [{**load, "repeat": r} for r in range(self.repeats) for load in loads]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["slo"] = None if self.slo is None else self.slo.to_dict()
        d["rate"] = None if self.rate is None else [_json_num(r) for r in self.rate]
        return d

    @classmethod
    def from_options(cls, *, remote: bool, **given: Any) -> BenchConfig:
        """The options a user gave (None = not given) on top of the defaults for the target.

        ``num_requests`` keeps its default only when no ``duration_s`` was given either, and
        the in-process ``concurrency`` default applies only when no ``rate`` was given.
        """
        options = {k: v for k, v in given.items() if v is not None}
        defaults = {} if remote else dict(IN_PROCESS_DEFAULTS)
        if "duration_s" in options:
            defaults.pop("num_requests", None)
            options.setdefault("num_requests", None)
        if "rate" in options:
            defaults.pop("concurrency", None)
        return cls(**{**defaults, **options})

    def run_settings(self) -> RunSettings:
        """What the runner (and each worker's runner) needs of this config."""
        return RunSettings(num_requests=self.num_requests, duration_s=self.duration_s,
                           slo=self.slo, burstiness=self.burstiness, seed=self.seed,
                           drain_s=self.drain_s)  # fmt: skip


def default_of(name: str) -> Any:
    """A field's default for an HTTP target (the CLI's help text quotes it)."""
    for f in fields(BenchConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)


def _json_num(x: float) -> float | str:
    return "inf" if math.isinf(x) else x
