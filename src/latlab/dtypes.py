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


def check_dtype(name: str, what: str = "dtype") -> str:
    """``name`` if it is "auto" or a known dtype; else ConfigError naming ``what`` and choices."""
    if name not in DTYPE_CHOICES:
        raise ConfigError(f"{what} must be one of {DTYPE_CHOICES}, got {name!r}")
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


def dtype_name(dtype: Any) -> str:
    """The table's name of a ``torch.dtype`` (``torch.bfloat16`` -> "bfloat16")."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"latlab runs models in {DTYPES}, not {dtype}")
    return name
