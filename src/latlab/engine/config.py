"""EngineConfig: the one object every engine knob lives on (CLI flags map onto its fields)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from latlab.errors import ConfigError

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_KV_DTYPES = ("auto", "float32", "bfloat16", "float16")
_QUANTIZATIONS = (None, "int8", "int8-weight-only")

# When neither kv_cache_bytes nor kv_cache_memory_fraction is set, the engine sizes the cache
# for max_num_seqs full-length sequences but never takes more than this share of RAM.
DEFAULT_KV_RAM_CAP_FRACTION = 0.25


@dataclass(slots=True)
class EngineConfig:
    """Engine settings; defaults serve the bundled model on CPU.

    KV budget: ``kv_cache_bytes`` wins, else ``kv_cache_memory_fraction`` of total RAM, else
    enough for ``max_num_seqs`` x ``max_model_len`` tokens capped at 25% of RAM.
    """

    model: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    block_size: int = 16
    kv_cache_bytes: int | None = None
    kv_cache_memory_fraction: float | None = None
    kv_cache_dtype: str = "auto"
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    max_waiting: int = 1024
    num_threads: int | None = None
    compile: bool = False
    seed: int = 0
    # oneDNN-prepacked linear weights on CPU; None = on for bf16/fp16 (measured 1.4-2.5x on
    # the matmuls, bit-identical there), off for float32 (keeps exact parity with transformers).
    packed_linear: bool | None = None
    # int8 linear weights (one scale per output channel; the output head stays as is):
    # "int8" also quantizes activations per token and runs int8 GEMMs (fbgemm on x86),
    # "int8-weight-only" keeps activations in floating point. None = the dtype's weights.
    quantization: str | None = None
    # Decode steps on CPU read the paged KV cache in place with a native kernel (built once per
    # machine, cached); None = when already built (an engine start never compiles), True = build
    # it now or fail, False = gathered K/V and batched matmuls.
    native_attention: bool | None = None
    # Prompt-lookup speculative decoding (0 = off): up to this many draft tokens, found by
    # matching the last prompt_lookup_max..prompt_lookup_min tokens earlier in the sequence,
    # verified in one forward pass. Greedy output stays the plain greedy output (float32
    # exactly; bf16 up to rounding of near-ties, as when the batch size changes); random
    # requests keep their distribution (speculative sampling).
    num_speculative_tokens: int = 0
    prompt_lookup_max: int = 3
    prompt_lookup_min: int = 1
    # Verifying k+1 tokens costs about one decode step only while the step is memory-bound:
    # on the ~106M model (bf16, 2 threads) a 5-token verify costs 0.98x a decode step at batch
    # 1, 1.5x at 4, 1.9x at 8, 3.2x at 32, and speculation measured 1.52x / 1.36x / 0.90x at
    # batch 1 / 4 / 8 on plain text (benchmarks/spec_decode.py). Above this many running
    # sequences, no drafts are proposed.
    speculative_max_batch: int = 4
    # Test-only: sleep this long before every engine step, so a test can make a healthy
    # server slow on purpose (the alerting end-to-end test sees its TTFT alert fire).
    debug_step_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.kv_cache_dtype not in _KV_DTYPES:
            raise ConfigError(
                f"kv_cache_dtype must be one of {_KV_DTYPES}, got {self.kv_cache_dtype!r}"
            )
        if self.quantization not in _QUANTIZATIONS:
            raise ConfigError(
                f"quantization must be one of {_QUANTIZATIONS[1:]} or None, "
                f"got {self.quantization!r}"
            )
        _positive("block_size", self.block_size)
        _positive("max_num_seqs", self.max_num_seqs)
        _positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _positive("max_waiting", self.max_waiting)
        spec = self.num_speculative_tokens
        if not isinstance(spec, int) or isinstance(spec, bool) or spec < 0:
            raise ConfigError(f"num_speculative_tokens must be >= 0 (0 = off), got {spec!r}")
        _positive("speculative_max_batch", self.speculative_max_batch)
        _positive("prompt_lookup_min", self.prompt_lookup_min)
        _positive("prompt_lookup_max", self.prompt_lookup_max)
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ConfigError(
                f"prompt_lookup_min ({self.prompt_lookup_min}) must not exceed "
                f"prompt_lookup_max ({self.prompt_lookup_max})"
            )
        if self.max_model_len is not None:
            _positive("max_model_len", self.max_model_len)
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads)
        if self.kv_cache_bytes is not None:
            _positive("kv_cache_bytes", self.kv_cache_bytes)
        delay = self.debug_step_delay_s
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 60:
            raise ConfigError(f"debug_step_delay_s must be between 0 and 60 s, got {delay!r}")
        frac = self.kv_cache_memory_fraction
        if frac is not None and not 0.0 < frac <= 0.95:
            raise ConfigError(f"kv_cache_memory_fraction must be in (0, 0.95], got {frac!r}")

    def kv_budget_bytes(self, bytes_per_token: int, max_model_len: int) -> int:
        """The KV cache size in bytes this config asks for (see the class docstring)."""
        ram = total_ram_bytes()
        if self.kv_cache_bytes is not None:
            return int(self.kv_cache_bytes)
        if self.kv_cache_memory_fraction is not None:
            return int(ram * self.kv_cache_memory_fraction)
        wanted = self.max_num_seqs * max_model_len * bytes_per_token
        return int(min(wanted, ram * DEFAULT_KV_RAM_CAP_FRACTION))


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def total_ram_bytes() -> int:
    """Physical memory of this machine (the KV budget on CPU comes out of it)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 1024**3
