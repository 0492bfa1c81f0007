"""The one table of dtypes latlab runs models in, and the rule for what "auto" means.

Names are torch's (``float32``, ``bfloat16``, ``float16``); ``auto`` is the checkpoint's own
dtype, float32 when its config.json does not say. torch is imported only to hand out a
``torch.dtype``, so the CLI and the config classes can use the table without it. (latlab.plan
names dtypes of other engines, fp8 and int4 included, for planning only: a separate table.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latlab.errors import ConfigError

AUTO = "auto"
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_CHOICES = (AUTO, *DTYPES)
_FALLBACK = "float32"
# The KV cache may also hold 8-bit floats: e5m2 (5 exponent bits, 2 mantissa bits, the top byte
# of a float16, no scale), vLLM's ``--kv-cache-dtype fp8_e5m2``. It halves the cache's bytes and
# changes the model's numbers.
FP8_E5M2 = "fp8_e5m2"
# Or int8 with a float32 scale per (token, KV head) row (engine/kv_int8.py): ~half the bytes of
# bf16, about 7 bits of each row kept relative to its largest value. latlab's engine only.
INT8 = "int8"
KV_DTYPES = (*DTYPES, FP8_E5M2, INT8)
KV_DTYPE_CHOICES = (AUTO, *KV_DTYPES)
_TORCH_NAMES = {FP8_E5M2: "float8_e5m2"}
_OUR_NAMES = {torch_name: ours for ours, torch_name in _TORCH_NAMES.items()}


def check_dtype(name: str, what: str = "dtype") -> str:
    """``name`` if it is "auto" or a known dtype; else ConfigError naming ``what`` and choices."""
    if name not in DTYPE_CHOICES:
        raise ConfigError(f"{what} must be one of {DTYPE_CHOICES}, got {name!r}")
    return name


def check_kv_dtype(name: str) -> str:
    """``name`` if it is "auto" or a dtype the KV cache can hold; else ConfigError."""
    if name not in KV_DTYPE_CHOICES:
        raise ConfigError(f"kv_cache_dtype must be one of {KV_DTYPE_CHOICES}, got {name!r}")
    return name


def checkpoint_dtype(config: Mapping[str, Any]) -> str | None:
    """The dtype a config.json says its weights are in (``dtype``, older ``torch_dtype``)."""
    name = config.get("dtype") or config.get("torch_dtype")
    return str(name) if name else None


def resolve(name: str, checkpoint: str | None) -> str:
    """A concrete dtype name: ``name`` itself, or for "auto" the checkpoint's (else float32)."""
    check_dtype(name)
    if name != AUTO:
        return name
    return checkpoint if checkpoint in DTYPES else _FALLBACK


def torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` of a concrete name from the table."""
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {name!r}")
    import torch

    return getattr(torch, name)


def kv_torch_dtype(name: str) -> Any:
    """The ``torch.dtype`` a KV cache of ``name`` is held in (fp8_e5m2: ``torch.float8_e5m2``)."""
    if name not in KV_DTYPES:
        raise ConfigError(f"kv_cache_dtype must be one of {KV_DTYPES}, got {name!r}")
    import torch

    return getattr(torch, _TORCH_NAMES.get(name, name))


def kv_scales(name: str) -> str:
    """The scale kind of a KV dtype for latlab.plan.kv: "token-head" for int8 (a float32 scale
    per row), "tensor" (nothing per token) for the others."""
    return "token-head" if name == INT8 else "tensor"


def dtype_name(dtype: Any) -> str:
    """The table's name of a ``torch.dtype`` (``torch.bfloat16`` -> "bfloat16",
    ``torch.float8_e5m2`` -> "fp8_e5m2")."""
    name = str(dtype).removeprefix("torch.")
    name = _OUR_NAMES.get(name, name)
    if name not in KV_DTYPES:
        raise ConfigError(f"latlab runs models in {DTYPES}, not {dtype}")
    return name
