"""Native CPU kernels of the engine, compiled once per machine and cached.

torch's C++ extension JIT builds them (a C++ compiler and ninja must be present; about a minute
of CPU on two cores, once: the build lands in torch's extension cache, keyed by the source, the
flags and this CPU). Building is never on an engine's start-up path: ``make setup`` starts the
build in the background and ``python -m latlab.engine.kernels`` builds in the foreground. Until
the build exists the engine runs its pure-torch path and says why (``native_attention=True``
waits for the build instead); ``LATLAB_NATIVE_KERNELS=0`` forces the torch path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("paged_attention.cpp")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]
BUILD_HINT = "`python -m latlab.engine.kernels` builds it; `make setup` does in the background"


@dataclass(frozen=True, slots=True)
class Kernel:
    """A loaded kernel, or None with the reason it is not available."""

    fn: Callable[..., object] | None
    reason: str


_loaded: dict[str, Kernel] = {}


def _build_name() -> str:
    from latlab.engine.hardware import cpu_capabilities

    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    digest.update(cpu_capabilities().model.encode())
    return f"latlab_paged_attention_{digest.hexdigest()[:12]}"


def build_directory() -> Path:
    """Where torch builds (and caches) this kernel for this source, these flags and this CPU."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(_build_name(), verbose=False))


def is_built() -> bool:
    """True when a finished build is in the cache (a build in progress holds its lock file)."""
    directory = build_directory()
    library = directory / f"{_build_name()}.so"
    return library.is_file() and not (directory / "lock").exists()


def paged_decode_attention(*, wait: bool = True) -> Kernel:
    """The in-place paged decode attention kernel (see paged_attention.cpp).

    ``wait=False`` loads it only when already built (never compiles: what an engine start
    does); ``wait=True`` builds it when missing, or waits for a build in progress.
    """
    if os.environ.get("LATLAB_NATIVE_KERNELS", "1") == "0":
        return Kernel(None, "LATLAB_NATIVE_KERNELS=0")
    name = _build_name()
    if name in _loaded:
        return _loaded[name]
    if not wait:
        if not is_built():
            return Kernel(None, f"native kernel not built yet ({BUILD_HINT})")
        _loaded[name] = _import_built(name)
    else:
        _loaded[name] = _build_and_load(name)
    return _loaded[name]


def _import_built(name: str) -> Kernel:
    """Import the cached library as it is: no ninja run, so a source whose mtime changed (a git
    checkout) but whose content did not (same name) is not rebuilt on an engine's start."""
    import torch  # noqa: F401  (the library links against libtorch's symbols)

    path = build_directory() / f"{name}.so"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError("not a Python extension module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:  # a library from another torch build: the torch path stays
        return Kernel(None, f"native kernel in {path} does not load ({exc}; {BUILD_HINT})")
    return Kernel(module.paged_decode_attention, "native paged decode attention (in place)")


def _build_and_load(name: str) -> Kernel:
    try:
        from torch.utils.cpp_extension import load

        module = load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a build error: the torch path stays
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Kernel(None, f"native kernel unavailable ({first[:160]})")
    return Kernel(module.paged_decode_attention, "native paged decode attention (in place)")
