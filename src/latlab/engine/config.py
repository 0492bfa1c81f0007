"""EngineConfig: the one object every engine knob lives on.

Each field is declared with ``latlab.settings.setting``: ``latlab serve`` builds its flags and
help from these declarations, and ``EngineConfig.from_options`` is the one front door from
keyword options (``LLM(**kw)``, bench ``--engine-arg``, plan files, recipes). Imports neither
torch nor the rest of the engine, so the CLI can read it cheaply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from latlab import dtypes
from latlab.errors import ConfigError
from latlab.settings import from_options, parse_millis, parse_size, setting

# When neither kv_cache_bytes nor kv_cache_memory_fraction is set, the engine sizes the cache
# for max_num_seqs full-length sequences but never takes more than this share of RAM.
DEFAULT_KV_RAM_CAP_FRACTION = 0.25
QUANTIZATIONS = ("int8", "int8-weight-only")


@dataclass(kw_only=True, slots=True)
class EngineConfig:
    """Engine settings; defaults serve the bundled model on CPU.

    KV budget: ``kv_cache_bytes`` wins, else ``kv_cache_memory_fraction`` of the device's
    memory (total RAM on CPU, the GPU's own on CUDA), else enough for ``max_num_seqs`` x
    ``max_model_len`` tokens capped at 25% of it.
    """

    model: str | None = setting(
        None, help="Model directory.", default_text="the bundled tiny model", cli=False
    )
    dtype: str = setting(
        "auto", help="Weight dtype (auto: the checkpoint's).", choices=dtypes.DTYPE_CHOICES
    )
    device: str = setting("cpu", help="cpu or cuda.")
    block_size: int = setting(16, help="Tokens per KV cache block.")
    kv_cache_bytes: int | None = setting(
        None,
        help="KV cache budget, e.g. 2GiB.",
        parse=parse_size,
        metavar="BYTES",
        default_text="max-num-seqs full contexts, capped at 25% of RAM (GPU memory on CUDA)",
    )
    kv_cache_memory_fraction: float | None = setting(
        None,
        help="KV cache budget as a fraction of memory, in (0, 0.95].",
        default_text="unset: kv-cache-bytes or the default sizing applies",
    )
    kv_cache_dtype: str = setting(
        "auto",
        help="KV cache dtype (auto: the weight dtype; fp8_e5m2: 8-bit floats, half the bytes "
        "of bf16; int8: 8-bit values with a float32 scale per token and KV head, ~0.53x the "
        "bytes of bf16 at head size 64; both 8-bit caches change the model's numbers).",
        choices=dtypes.KV_DTYPE_CHOICES,
    )
    max_num_seqs: int = setting(64, help="Most sequences in one batch.")
    max_num_batched_tokens: int = setting(
        512, help="Token budget per engine step (chunked prefill)."
    )
    max_model_len: int | None = setting(None, help="Context limit.", default_text="the model's")
    enable_prefix_caching: bool = setting(
        True, help="Reuse the KV blocks of prompt prefixes seen before.", flag="prefix-caching"
    )
    max_waiting: int = setting(1024, help="Queue bound; beyond it requests get 503.")
    num_threads: int | None = setting(
        None, help="Torch threads.", flag="threads", default_text="torch's"
    )
    compile: bool = setting(False, help="torch.compile the model.")
    seed: int = setting(0, help="Engine seed.")
    # Packed linear weights on CPU: copies reordered once for oneDNN's GEMM, or for the engine's
    # AMX-tile GEMM (bf16 on a CPU with AMX: 1.23x oneDNN's at 8-64 rows). float32 and bf16
    # with bf16 GEMMs keep them beside the plain weights when a step can have more than 4 rows
    # (the native decode steps read the plain ones at 1-4 rows), plain only otherwise; fp16
    # packs only. False = plain weights only (one copy).
    packed_linear: bool | None = setting(
        None,
        help="Packed linear weights on CPU (oneDNN's, or AMX tiles for bf16), beside plain ones.",
        default_text="on when max_num_seqs > 4 (float16: always)",
    )
    # int8 linear weights (one scale per output channel; the output head stays as is):
    # "int8" also quantizes activations per token and runs int8 GEMMs (fbgemm on x86),
    # "int8-weight-only" keeps activations in floating point. None = the dtype's weights.
    quantization: str | None = setting(
        None,
        help="int8 linear weights (per-channel scales): 'int8' also quantizes activations per "
        "token (int8 GEMMs), 'int8-weight-only' keeps them in floating point.",
        choices=QUANTIZATIONS,
        default_text="none: the dtype's weights",
    )
    # Decode steps on CPU read the paged KV cache in place with a native kernel (built once per
    # machine, cached); None = when already built (an engine start never compiles), True = build
    # it now or fail, False = gathered K/V and batched matmuls.
    native_attention: bool | None = setting(
        None,
        help="Native paged decode attention on CPU (--no-native-attention: gathered K/V).",
        default_text="when its kernel is already built",
    )
    # Decode steps of 1-4 sequences on CPU with float32, bf16 or weight-only int8 weights run as
    # one native call (decode_step.cpp: every layer and the head in one parallel region, GEMVs
    # streaming the weights, the elementwise work inline, activations in float32), and bf16
    # decode steps of 5-64 sequences on an AMX CPU too (decode_batch.cpp: the step ops' numbers
    # bit for bit); same build as native_attention; None = when built, True = build it now or
    # fail, False = torch ops / step ops. The small steps sum each dot product in their own
    # order (logits differ from F.linear's in the last bits; greedy parity with transformers
    # is tested with it on).
    native_decode: bool | None = setting(
        None,
        help="Decode steps of 1-4 sequences (CPU; float32, bf16 or int8-weight-only weights) and "
        "bf16 ones of 5-64 on AMX CPUs as one native call (--no-native-decode: torch ops).",
        default_text="when its kernel is already built",
    )
    # Large weight tensors (>= 2 MiB) copied into memory madvise'd for transparent huge pages
    # on CPU, and the KV cache allocated there: a batch-1 step streams every weight, decode
    # attention reads blocks scattered over the cache, and 4 KiB pages cost a TLB miss each
    # (huge_pages.py). None = where the kernel's THP mode allows it, True = or fail.
    huge_pages: bool | None = setting(
        None,
        help="Weights and the KV cache in transparent huge pages on CPU (--no-huge-pages: "
        "4 KiB pages).",
        default_text="where the kernel allows (THP always or madvise)",
    )
    # Prompt-lookup speculative decoding (0 = off): up to this many draft tokens, found by
    # matching the last prompt_lookup_max..prompt_lookup_min tokens earlier in the sequence,
    # verified in one forward pass. Greedy output stays the plain greedy output (float32
    # exactly; bf16 up to rounding of near-ties, as when the batch size changes); random
    # requests keep their distribution (speculative sampling).
    num_speculative_tokens: int = setting(
        0,
        help="Prompt-lookup speculative decoding: up to N draft tokens per step; greedy "
        "output unchanged, sampling keeps its distribution (0 = off).",
    )
    prompt_lookup_max: int = setting(3, help="Longest n-gram matched for drafts.")
    prompt_lookup_min: int = setting(1, help="Shortest n-gram matched for drafts.")
    # Verifying k+1 tokens costs about one decode step only while the step is memory-bound:
    # on the ~106M model (bf16, 2 threads) a 5-token verify costs 0.98x a decode step at batch
    # 1, 1.5x at 4, 1.9x at 8, 3.2x at 32, and speculation measured 1.52x / 1.36x / 0.90x at
    # batch 1 / 4 / 8 on plain text (benchmarks/spec_decode.py). Above this many running
    # sequences, no drafts are proposed.
    speculative_max_batch: int = setting(
        4, help="No drafts while more sequences than this are running."
    )
    # Test-only: sleep this long before every engine step, so a test can make a healthy
    # server slow on purpose (the alerting end-to-end test sees its TTFT alert fire).
    debug_step_delay_s: float = setting(
        0.0,
        help="Test-only: sleep this many milliseconds before every engine step.",
        flag="debug-step-delay-ms",
        parse=parse_millis,
        metavar="MS",
        hidden=True,
    )

    def __post_init__(self) -> None:
        dtypes.check_dtype(self.dtype, "dtype")
        dtypes.check_kv_dtype(self.kv_cache_dtype)
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ConfigError(
                f"quantization must be one of {QUANTIZATIONS} or None, got {self.quantization!r}"
            )
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_waiting"):
            _positive(name, getattr(self, name))
        spec = self.num_speculative_tokens
        if not isinstance(spec, int) or isinstance(spec, bool) or spec < 0:
            raise ConfigError(f"num_speculative_tokens must be >= 0 (0 = off), got {spec!r}")
        for name in ("speculative_max_batch", "prompt_lookup_min", "prompt_lookup_max"):
            _positive(name, getattr(self, name))
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ConfigError(
                f"prompt_lookup_min ({self.prompt_lookup_min}) must not exceed "
                f"prompt_lookup_max ({self.prompt_lookup_max})"
            )
        for name in ("max_model_len", "num_threads", "kv_cache_bytes"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        delay = self.debug_step_delay_s
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 60:
            raise ConfigError(f"debug_step_delay_s must be between 0 and 60 s, got {delay!r}")
        frac = self.kv_cache_memory_fraction
        if frac is not None and not 0.0 < frac <= 0.95:
            raise ConfigError(f"kv_cache_memory_fraction must be in (0, 0.95], got {frac!r}")

    @classmethod
    def from_options(cls, **options: Any) -> EngineConfig:
        """The front door from keyword options: unknown keys and a double budget refused.

        Text values are read as their field reads them (``kv_cache_bytes="2GiB"``).
        """
        if options.get("kv_cache_bytes") is not None and (
            options.get("kv_cache_memory_fraction") is not None
        ):
            raise ConfigError(
                "give kv_cache_bytes (--kv-cache-bytes) or kv_cache_memory_fraction "
                "(--kv-cache-memory-fraction), not both"
            )
        return from_options(cls, options, kind="engine", owner="the latlab engine")

    def weight_dtype(self, checkpoint: str | None) -> str:
        """The dtype the weights run in, for a checkpoint stored in ``checkpoint``."""
        return dtypes.resolve(self.dtype, checkpoint)

    def kv_dtype(self, checkpoint: str | None) -> str:
        """The KV cache dtype: ``kv_cache_dtype``, and for "auto" the weights' dtype."""
        if self.kv_cache_dtype == dtypes.AUTO:
            return self.weight_dtype(checkpoint)
        return self.kv_cache_dtype

    def kv_budget_bytes(self, bytes_per_token: int, max_model_len: int) -> int:
        """The KV cache size in bytes this config asks for (see the class docstring)."""
        if self.kv_cache_bytes is not None:
            return int(self.kv_cache_bytes)
        memory = device_memory_bytes(self.device)
        if self.kv_cache_memory_fraction is not None:
            return int(memory * self.kv_cache_memory_fraction)
        wanted = self.max_num_seqs * max_model_len * bytes_per_token
        return int(min(wanted, memory * DEFAULT_KV_RAM_CAP_FRACTION))


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def device_memory_bytes(device: str) -> int:
    """The memory the KV cache comes out of: RAM on CPU, the GPU's own on CUDA (its host's RAM
    says nothing about what fits on an 80 GB card)."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index
        return int(torch.cuda.get_device_properties(index or 0).total_memory)
    return total_ram_bytes()


def total_ram_bytes() -> int:
    """Physical memory of this machine (the KV budget on CPU comes out of it)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 1024**3
