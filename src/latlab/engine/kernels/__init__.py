"""Native CPU kernels of the engine, compiled on first use and cached per machine.

torch's C++ extension JIT builds them (a C++ compiler and ninja must be present; about a minute
on two cores, once: the build lands in torch's extension cache, keyed by the source, the flags
and this CPU). ``make setup`` builds them ahead. Where the build is impossible the engine runs
its pure-torch path and says why; ``LATLAB_NATIVE_KERNELS=0`` forces that path.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("paged_attention.cpp")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]


@dataclass(frozen=True, slots=True)
class Kernel:
    """A loaded kernel, or None with the reason it is not available."""

    fn: Callable[..., object] | None
    reason: str


def _build_name() -> str:
    from latlab.engine.hardware import cpu_capabilities

    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    digest.update(cpu_capabilities().model.encode())
    return f"latlab_paged_attention_{digest.hexdigest()[:12]}"


@functools.cache
def paged_decode_attention() -> Kernel:
    """The in-place paged decode attention kernel (see paged_attention.cpp)."""
    if os.environ.get("LATLAB_NATIVE_KERNELS", "1") == "0":
        return Kernel(None, "LATLAB_NATIVE_KERNELS=0")
    try:
        from torch.utils.cpp_extension import load

        module = load(
            name=_build_name(),
            sources=[str(SOURCE)],
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a build error: the torch path stays
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Kernel(None, f"native kernel unavailable ({first[:160]})")
    return Kernel(module.paged_decode_attention, "native paged decode attention (in place)")
